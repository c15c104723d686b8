/* modelserve playground: one panel per served model, built from GET /models.
 *
 * Plain JavaScript, no build step, nothing fetched from anywhere but this service. The
 * page knows model *kinds* (the `kind` on /models), never model names: each model's
 * endpoint, request field, labels, features and example come from /models, and every
 * prediction goes through the same public endpoint any client uses.
 */
"use strict";

const PANELS = {
  image_classification: imagePanel,
  text_classification: textPanel,
  tabular_regression: tabularPanel,
};
const PLOT_CAPTIONS = {
  "history.png": "Training curves",
  "confusion_matrix.png": "Confusion matrix (test set)",
  "kfold_val_mae.png": "K-fold validation MAE",
};
const LOADING_RETRY_MS = 2000;

// ------------------------------------------------------------------ helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

let lastId = 0;
const newId = (prefix) => `${prefix}-${++lastId}`;

/** A path of this service, relative to the page, so the page also works behind a path prefix. */
const url = (path) => new URL(String(path).replace(/^\//, ""), document.baseURI).href;
const percent = (p) => `${(100 * p).toFixed(1)}%`;
const short = (x) => (Number.isFinite(x) ? String(Number(x.toPrecision(4))) : String(x));
const plural = (n, noun) => `${n} ${noun}${n === 1 ? "" : "s"}`;

/** POST to a public endpoint; the answer's JSON (or the error it explains) and how long it took. */
async function post(endpoint, init) {
  const started = performance.now();
  let response;
  try {
    response = await fetch(url(endpoint), { method: "POST", ...init });
  } catch (err) {
    return { ok: false, status: 0, body: { error: `the service did not answer (${err.message})` }, ms: 0 };
  }
  let body;
  try {
    body = await response.json();
  } catch {
    body = { error: `HTTP ${response.status} ${response.statusText}` };
  }
  return { ok: response.ok, status: response.status, body, ms: Math.round(performance.now() - started) };
}

/** "images[1]: is corrupt; images[3]: ..." -> {items: Map(1 -> "is corrupt", ...), general: text not about one item}.
 * Whatever stands between "[1]" and the colon (".field", " (name.jpg)") is part of the item's address. */
function splitErrors(message, field) {
  const text = String(message || "request refused");
  const marks = [...text.matchAll(new RegExp(`(?:^|;\\s*)${field}\\[(\\d+)\\][^:;]*:\\s*`, "g"))];
  const items = new Map();
  if (!marks.length) return { items, general: text };
  marks.forEach((mark, i) => {
    const end = i + 1 < marks.length ? marks[i + 1].index : text.length;
    const part = text.slice(mark.index + mark[0].length, end).trim();
    const index = Number(mark[1]);
    items.set(index, items.has(index) ? `${items.get(index)}; ${part}` : part);
  });
  return { items, general: text.slice(0, marks[0].index).trim() };
}

function errorBox(id) {
  const box = el("p", { class: "error", id, role: "alert", hidden: true });
  box.show = (message) => {
    box.textContent = message;
    box.hidden = !message;
  };
  box.clear = () => box.show("");
  return box;
}

function bar(name, p, top) {
  const fill = el("span", { class: "fill" });
  fill.style.width = `${Math.max(0, Math.min(1, p)) * 100}%`;
  return el(
    "div",
    { class: `bar-row${top ? " top" : ""}`, "data-class": name },
    el("span", { class: "bar-name", text: name }),
    el(
      "span",
      {
        class: "bar",
        role: "meter",
        "aria-label": `probability of ${name}`,
        "aria-valuemin": 0,
        "aria-valuemax": 100,
        "aria-valuenow": (100 * p).toFixed(1),
        "aria-valuetext": percent(p),
      },
      fill,
    ),
    el("span", { class: "bar-value", text: percent(p) }),
  );
}

function answeredBy(answer, ms) {
  return el("p", { class: "answered-by" }, `${answer.model} v${answer.version}`, ms ? ` · ${ms} ms` : "");
}

// ------------------------------------------------------------------ copy as curl

const SAFE_SHELL = /^[\w@%+=:,./-]+$/;
const quote = (s) => (SAFE_SHELL.test(s) ? s : `'${String(s).replace(/'/g, `'\\''`)}'`);

function curlJson(endpoint, body) {
  return `curl -H 'content-type: application/json' ${quote(url(endpoint))} \\\n     -d ${quote(JSON.stringify(body))}`;
}

function curlFiles(endpoint, field, files) {
  return `curl ${files.map((f) => `-F ${quote(`${field}=@${f.name}`)}`).join(" ")} ${quote(url(endpoint))}`;
}

function curlBox() {
  const code = el("code");
  const said = el("span", { class: "copied", role: "status" });
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(code.textContent);
      said.textContent = "Copied.";
    } catch {
      window.getSelection().selectAllChildren(code);
      said.textContent = document.execCommand("copy") ? "Copied." : "Selected: press Ctrl+C to copy.";
    }
  };
  const box = el(
    "details",
    { class: "curl", hidden: true },
    el("summary", {}, "Last request as curl"),
    el("pre", {}, code),
    el("div", { class: "curl-actions" }, el("button", { type: "button", class: "secondary small", onclick: copy }, "Copy"), said),
  );
  box.set = (text) => {
    code.textContent = text;
    said.textContent = "";
    box.hidden = false;
  };
  return box;
}

// ------------------------------------------------------------------ panels

const KIND_TITLES = { image_classification: "Classify images", text_classification: "Classify texts" };

/** What the panel does and with which model: two models of one kind must not read alike. */
function panelTitle(model) {
  const verb = model.kind === "tabular_regression" ? `Predict ${model.request.answer_field}` : KIND_TITLES[model.kind];
  return verb ? `${verb} with ${model.name}` : model.name;
}

function panelShell(model, intro) {
  const headingId = newId("heading");
  const section = el(
    "section",
    { class: "panel", id: `panel-${model.name}`, "data-model": model.name, "data-kind": model.kind, "aria-labelledby": headingId },
    el(
      "header",
      { class: "panel-head" },
      el("h2", { id: headingId }, panelTitle(model)),
      el("p", { class: "meta" }, el("span", { class: "chip" }, `${model.name} v${model.version}`), el("code", {}, `POST ${model.endpoint}`)),
    ),
    intro ? el("p", { class: "hint" }, intro) : null,
  );
  return section;
}

// ---- images

function imageItem(file, labels) {
  const preview = URL.createObjectURL(file);
  const img = el("img", { src: preview, alt: `preview of ${file.name}` });
  const frame = el("div", { class: "thumb-img" }, img);
  img.addEventListener("error", () => frame.replaceChildren(el("span", { class: "no-preview" }, "no preview")));
  const verdict = el("p", { class: "verdict" }, "classifying…");
  const bars = el("div", { class: "bars" });
  const error = el("p", { class: "error item-error", hidden: true });
  const footer = el("div", { class: "thumb-foot" });
  const node = el(
    "li",
    { class: "thumb pending", "data-file": file.name },
    frame,
    el("div", { class: "thumb-body" }, el("p", { class: "file-name", title: file.name }, file.name), verdict, bars, error, footer),
  );
  return {
    file,
    node,
    preview,
    answer(answer, ms) {
      node.classList.remove("pending");
      node.dataset.label = answer.label;
      verdict.replaceChildren(el("span", { class: "label" }, answer.label), el("span", { class: "score" }, percent(answer.score)));
      const names = labels.length ? labels : Object.keys(answer.probabilities);
      bars.replaceChildren(...names.map((name) => bar(name, answer.probabilities[name] ?? 0, name === answer.label)));
      footer.replaceChildren(answeredBy(answer, ms));
    },
    fail(message) {
      node.classList.remove("pending");
      node.classList.add("failed");
      verdict.textContent = "not classified";
      error.textContent = message;
      error.hidden = false;
    },
  };
}

function imagePanel(model) {
  const req = model.request;
  const suffixes = (req.file_suffixes || []).map((s) => s.replace(/^\./, "").toUpperCase());
  const section = panelShell(model, `Labels: ${model.labels.join(", ")}. Drop or choose one or more images; each gets its label and a bar per class.`);
  const inputId = newId("files");
  const errorId = newId("error");
  const input = el("input", {
    type: "file",
    id: inputId,
    class: "file-input",
    multiple: true,
    accept: ["image/*", ...(req.file_suffixes || [])].join(","),
    "aria-describedby": errorId,
  });
  const zone = el(
    "label",
    { class: "drop", for: inputId },
    input,
    el("span", { class: "drop-icon", "aria-hidden": "true" }),
    el("span", { class: "drop-text" }, el("strong", {}, "Drop images here"), " or ", el("span", { class: "linkish" }, "choose files")),
    suffixes.length ? el("span", { class: "drop-sub" }, suffixes.join(" · ")) : null,
  );
  const error = errorBox(errorId);
  const note = el("p", { class: "note", role: "status" });
  const grid = el("ol", { class: "thumbs", "aria-label": "classified images" });
  const curl = curlBox();
  let previews = [];

  async function classify(files) {
    if (!files.length) return;
    previews.forEach((p) => URL.revokeObjectURL(p));
    error.clear();
    note.textContent = "";
    const items = files.map((file) => imageItem(file, model.labels));
    previews = items.map((item) => item.preview);
    grid.replaceChildren(...items.map((item) => item.node));
    let pending = items;
    const refused = [];
    while (pending.length) {
      const form = new FormData();
      pending.forEach((item) => form.append(req.field, item.file, item.file.name));
      curl.set(curlFiles(model.endpoint, req.field, pending.map((item) => item.file)));
      const res = await post(model.endpoint, { body: form });
      if (res.ok) {
        res.body.forEach((answer, k) => pending[k].answer(answer, res.ms));
        break;
      }
      const { items: bad, general } = splitErrors(res.body.error, req.field);
      if (!bad.size || res.status >= 500) {
        pending.forEach((item) => item.fail("not sent: see the message above"));
        error.show(res.body.error);
        break;
      }
      bad.forEach((message, index) => pending[index]?.fail(message));
      refused.push(...[...bad.keys()].map((index) => pending[index]).filter(Boolean));
      if (general) error.show(general);
      pending = pending.filter((_, index) => !bad.has(index));
    }
    if (refused.length) {
      const rest = items.length - refused.length;
      note.textContent = `The API refused ${plural(refused.length, "image")} (HTTP 400, message under each)${rest ? `; the other ${rest} were sent again without it.` : "."}`;
    }
  }

  input.addEventListener("change", () => {
    classify([...input.files]);
    input.value = "";
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    classify([...event.dataTransfer.files]);
  });
  section.append(zone, error, note, grid, curl);
  return section;
}

// ---- texts

function paragraphs(value) {
  const parts = value
    .split(/\n[ \t]*\n/)
    .map((s) => s.trim())
    .filter(Boolean);
  return parts.length ? parts : [value.trim()]; // nothing typed: send it anyway, the API says what is wrong
}

/** A text's answer: binary models give the probability of the positive label, multi-class ones every label's. */
function textVerdict(answer, req) {
  if (!answer.probabilities) return [bar(req.positive, answer.probability_positive, true)];
  const names = req.labels || Object.keys(answer.probabilities);
  return names.map((name) => bar(name, answer.probabilities[name] ?? 0, name === answer.label));
}

function textPanel(model) {
  const req = model.request;
  const multiclass = Array.isArray(req.labels);
  const intro = multiclass
    ? `${model.data.dataset || model.name}: one of ${req.labels.join(", ")}, with the probability of each.`
    : `${model.data.dataset || model.name}: ${req.negative} or ${req.positive}, with the probability of ${req.positive}.`;
  const section = panelShell(model, intro);
  const areaId = newId("texts");
  const hintId = newId("hint");
  const errorId = newId("error");
  const area = el("textarea", { id: areaId, name: req.field, rows: 7, "aria-describedby": `${hintId} ${errorId}` });
  area.value = (req.examples || []).join("\n\n");
  const error = errorBox(errorId);
  const results = el("ol", { class: "texts", "aria-label": "classified texts" });
  const curl = curlBox();
  const form = el(
    "form",
    { class: "stack", novalidate: true },
    el("label", { for: areaId, class: "field-label" }, `${req.item[0].toUpperCase()}${req.item.slice(1)}s to classify`),
    el("p", { id: hintId, class: "hint" }, "One per paragraph: leave an empty line between two. Ctrl+Enter sends."),
    area,
    error,
    el(
      "div",
      { class: "actions" },
      el("button", { type: "submit" }, `Classify ${req.item}s`),
      el("button", { type: "button", class: "secondary", onclick: () => ((area.value = ""), area.focus()) }, "Clear"),
    ),
  );

  async function submit(event) {
    event.preventDefault();
    const texts = paragraphs(area.value);
    const body = { [req.field]: texts };
    curl.set(curlJson(model.endpoint, body));
    error.clear();
    area.removeAttribute("aria-invalid");
    const res = await post(model.endpoint, { headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    if (!res.ok) {
      const { items, general } = splitErrors(res.body.error, req.field);
      const lines = [...items].map(([index, message]) => `${req.item} ${index + 1} (paragraph ${index + 1}): ${message}`);
      error.show([general, ...lines].filter(Boolean).join("\n"));
      area.setAttribute("aria-invalid", "true");
      results.replaceChildren();
      return;
    }
    results.replaceChildren(
      ...res.body.map((answer, k) =>
        el(
          "li",
          { class: `text-result ${multiclass ? "is-class" : answer.label === req.positive ? "is-positive" : "is-negative"}`, "data-label": answer.label },
          el("blockquote", { title: texts[k] }, texts[k].length > 160 ? `${texts[k].slice(0, 160)}…` : texts[k]),
          el("p", { class: "verdict" }, el("span", { class: "label" }, answer.label)),
          ...textVerdict(answer, req),
          answeredBy(answer, res.ms),
        ),
      ),
    );
  }

  form.addEventListener("submit", submit);
  area.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
  });
  section.append(form, results, curl);
  return section;
}

// ---- tables

/** A categorical feature: a choice among the categories the model was trained on. */
function categoryField(feature, value) {
  const id = newId("feature");
  const hintId = `${id}-hint`;
  const errorId = `${id}-error`;
  const input = el("select", { id, name: feature.name, "aria-describedby": `${hintId} ${errorId}` }, feature.categories.map((c) => el("option", { value: c }, c)));
  input.value = value === undefined ? feature.categories[0] : String(value);
  const hint = el("span", { class: "range", id: hintId }, `one of ${plural(feature.categories.length, "category")} seen in training`);
  const error = el("span", { class: "error field-error", id: errorId, hidden: true });
  const node = el("div", { class: "field", "data-feature": feature.name }, el("label", { for: id }, feature.name), input, hint, error);
  input.addEventListener("change", () => {
    node.classList.remove("invalid");
    input.removeAttribute("aria-invalid");
    error.hidden = true;
  });
  return {
    feature,
    node,
    input,
    set(v) {
      input.value = v === undefined ? feature.categories[0] : String(v);
      input.dispatchEvent(new Event("change"));
    },
    fail(message) {
      node.classList.add("invalid");
      input.setAttribute("aria-invalid", "true");
      error.textContent = message;
      error.hidden = false;
    },
  };
}

function featureField(feature, value, rangeSeen) {
  if (Array.isArray(feature.categories)) return categoryField(feature, value);
  const id = newId("feature");
  const hintId = `${id}-hint`;
  const errorId = `${id}-error`;
  const input = el("input", {
    id,
    name: feature.name,
    type: "text",
    inputmode: "decimal",
    autocomplete: "off",
    spellcheck: "false",
    "aria-describedby": `${hintId} ${errorId}`,
  });
  input.value = value === undefined ? "" : short(value);
  const range = `${short(feature.min)} – ${short(feature.max)}`;
  const hint = el("span", { class: "range", id: hintId }, rangeSeen ? range : `≈ ${range}`);
  const error = el("span", { class: "error field-error", id: errorId, hidden: true });
  // What the code means, when the version's metadata says (preprocessing.feature_descriptions).
  const meaning = feature.description ? el("span", { class: "meaning", id: `${id}-meaning` }, feature.description) : null;
  if (meaning) input.setAttribute("aria-describedby", `${meaning.id} ${hintId} ${errorId}`);
  const node = el("div", { class: "field", "data-feature": feature.name }, el("label", { for: id }, feature.name), meaning, input, hint, error);
  const check = () => {
    const x = Number(input.value);
    const outside = input.value.trim() !== "" && Number.isFinite(x) && (x < feature.min || x > feature.max);
    node.classList.toggle("outside", outside);
    hint.textContent = (rangeSeen ? range : `≈ ${range}`) + (outside ? (rangeSeen ? " · outside training" : " · unusual") : "");
  };
  input.addEventListener("input", () => {
    check();
    node.classList.remove("invalid");
    input.removeAttribute("aria-invalid");
    error.hidden = true;
  });
  check();
  return {
    feature,
    node,
    input,
    set(v) {
      input.value = v === undefined ? "" : short(v);
      input.dispatchEvent(new Event("input"));
    },
    fail(message) {
      node.classList.add("invalid");
      input.setAttribute("aria-invalid", "true");
      error.textContent = message;
      error.hidden = false;
    },
  };
}

/** The row as the API takes it: numbers by name, a category as its name; an empty field is left out (the API names it missing), text stays text. */
function rowOf(fields) {
  const row = {};
  for (const field of fields) {
    if (Array.isArray(field.feature.categories)) {
      row[field.feature.name] = field.input.value;
      continue;
    }
    const text = field.input.value.trim();
    if (text === "") continue;
    const x = Number(text);
    row[field.feature.name] = Number.isFinite(x) ? x : text;
  }
  return row;
}

function mentions(message, name) {
  return new RegExp(`(^|[^A-Za-z0-9_])${name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}([^A-Za-z0-9_]|$)`).test(message);
}

function tabularPanel(model) {
  const req = model.request;
  const example = req.example || { values: {}, source: "" };
  const target = Number.isFinite(example.target) ? ` (its true ${req.answer_field}: ${short(example.target)} ${req.unit})` : "";
  const section = panelShell(model, `${model.data.dataset || model.name}. Every feature the model takes, prefilled with ${example.source}${target}.`);
  const fields = req.features.map((f) => featureField(f, example.values[f.name], req.range_seen));
  const error = errorBox(newId("error"));
  const result = el("output", { class: "prediction", "aria-live": "polite" });
  const curl = curlBox();
  const rangeNote = el(
    "p",
    { class: req.range_seen ? "hint" : "hint fallback" },
    req.range_seen ? `Under each field: the ${req.range_source}.` : `Under each field, ≈: ${req.range_source}.`,
  );
  const form = el(
    "form",
    { class: "stack", novalidate: true },
    el("fieldset", {}, el("legend", {}, `Features (${fields.length})`), rangeNote, el("div", { class: "fields" }, fields.map((f) => f.node))),
    error,
    el(
      "div",
      { class: "actions" },
      el("button", { type: "submit" }, `Predict ${req.answer_field}`),
      el("button", { type: "button", class: "secondary", onclick: () => fields.forEach((f) => f.set(example.values[f.feature.name])) }, "Reset to the example"),
    ),
  );

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { [req.field]: [rowOf(fields)] };
    curl.set(curlJson(model.endpoint, body));
    error.clear();
    fields.forEach((f) => f.node.classList.contains("invalid") && f.input.dispatchEvent(new Event(f.feature.categories ? "change" : "input")));
    const res = await post(model.endpoint, { headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    if (!res.ok) {
      const { items, general } = splitErrors(res.body.error, req.field);
      // The field a message is about: the names it mentions outside its asides ("(expected [every name])").
      const message = (items.get(0) || general).replace(/\s*\([^)]*\)/g, "");
      fields.filter((f) => mentions(message, f.feature.name)).forEach((f) => f.fail(message));
      error.show(res.body.error);
      result.replaceChildren();
      return;
    }
    const answer = res.body[0];
    result.replaceChildren(
      el("span", { class: "value" }, answer[req.answer_field].toFixed(2)),
      el("span", { class: "unit" }, answer.unit || req.unit),
      el("span", { class: "what" }, `predicted ${req.answer_field}`),
      answeredBy(answer, res.ms),
    );
  });
  section.append(form, result, curl);
  return section;
}

// ------------------------------------------------------------------ model cards

function definitions(pairs) {
  return el(
    "dl",
    {},
    pairs.filter(([, v]) => v !== undefined && v !== null && v !== "").flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]),
  );
}

/** "2026-11-23T12:41:24+00:00" -> "2026-11-23 12:41 UTC" (the registry and the runtime write UTC). */
const when = (iso) => String(iso || "").replace(/^(\d{4}-\d\d-\d\d)T(\d\d:\d\d).*(\+00:00|Z)$/, "$1 $2 UTC");

function samples(value) {
  if (value && typeof value === "object") return Object.entries(value).map(([k, v]) => `${k} ${v}`).join(", ");
  return value;
}

function modelCard(model) {
  const metrics = Object.entries(model.metrics?.test || {});
  const first = metrics.find(([k]) => k !== "samples");
  const plots = (model.plots || []).map((file) => {
    const src = url(`models/${encodeURIComponent(model.name)}/versions/${model.version}/plots/${encodeURIComponent(file)}`);
    const caption = PLOT_CAPTIONS[file] || file;
    return el(
      "figure",
      { class: "plot", "data-plot": file },
      el("a", { href: src, target: "_blank", rel: "noopener" }, el("img", { src, alt: `${caption} of ${model.name} v${model.version}`, loading: "lazy" })),
      el("figcaption", {}, caption),
    );
  });
  return el(
    "details",
    { class: "card", id: `card-${model.name}`, "data-model": model.name },
    el(
      "summary",
      {},
      el("span", { class: "card-title" }, model.name),
      el("span", { class: "chip" }, `v${model.version}`),
      el("span", { class: "muted" }, first ? `${first[0]} ${short(first[1])}` : model.kind),
    ),
    el(
      "div",
      { class: "card-body" },
      el(
        "section",
        {},
        el("h3", {}, "Version"),
        definitions([
          ["kind", model.kind],
          ["endpoint", `POST ${model.endpoint}`],
          ["created", when(model.created_at)],
          ["loaded", when(model.loaded_at)],
          ["sha256", el("code", { title: model.sha256 }, `${String(model.sha256).slice(0, 12)}…`)],
          ["max batch", model.max_batch_size],
        ]),
      ),
      el(
        "section",
        {},
        el("h3", {}, "Test metrics"),
        el("table", {}, el("tbody", {}, metrics.map(([k, v]) => el("tr", {}, el("th", { scope: "row" }, k), el("td", {}, short(v)))))),
      ),
      el(
        "section",
        {},
        el("h3", {}, "Data"),
        definitions([
          ["dataset", model.data?.dataset],
          ["samples", samples(model.data?.samples)],
          ["synthetic", model.data?.synthetic ? "yes" : "no"],
          ["fingerprint", model.data?.fingerprint ? el("code", { title: model.data.fingerprint }, `${model.data.fingerprint.slice(0, 12)}…`) : null],
        ]),
      ),
      el(
        "section",
        {},
        el("h3", {}, "Providers"),
        el("p", { class: "hint" }, "What the onnxruntime session really uses:"),
        el("ul", { class: "providers" }, (model.providers || []).map((p) => el("li", {}, el("code", {}, p)))),
        el("p", { class: "hint" }, `requested: ${(model.requested_providers || []).join(", ")}`),
        model.model_file
          ? el("p", { class: "hint model-file" }, "runs ", el("code", {}, model.model_file.file), ` (${model.model_file.precision})`, model.model_file.note ? ` — ${model.model_file.note}` : "")
          : null,
      ),
      plots.length ? el("section", { class: "plots" }, el("h3", {}, "Plots"), el("div", { class: "plot-grid" }, plots)) : null,
    ),
  );
}

// ------------------------------------------------------------------ page

function unsupportedPanel(model) {
  return panelShell(model, `This page has no form for ${model.kind} models yet; use POST ${model.endpoint} (see the API docs).`);
}

async function load() {
  const status = document.getElementById("status");
  let response, catalog;
  try {
    response = await fetch(url("models"));
    catalog = await response.json();
  } catch (err) {
    status.textContent = `GET /models failed (${err.message}); retrying…`;
    setTimeout(load, LOADING_RETRY_MS);
    return;
  }
  if (response.status === 503) {
    status.textContent = `${catalog.error}; retrying…`;
    setTimeout(load, LOADING_RETRY_MS);
    return;
  }
  if (!response.ok) {
    status.textContent = `GET /models answered ${response.status}: ${catalog.error}`;
    status.classList.add("error");
    return;
  }
  render(catalog);
}

function render(catalog) {
  const status = document.getElementById("status");
  const nav = document.getElementById("models-nav");
  const panels = document.getElementById("panels");
  const cards = document.getElementById("card-list");
  const order = (model) => (model.kind in PANELS ? Object.keys(PANELS).indexOf(model.kind) : Object.keys(PANELS).length);
  const models = [...catalog.models].sort((a, b) => order(a) - order(b)); // stable: the catalog's order within a kind
  for (const model of models) {
    const panel = (PANELS[model.kind] || unsupportedPanel)(model);
    panels.append(panel);
    nav.append(el("li", {}, el("a", { href: `#${panel.id}` }, `${panelTitle(model)} · ${model.name}`)));
    cards.append(modelCard(model));
  }
  nav.append(el("li", {}, el("a", { href: "#cards" }, "Model cards")));
  document.getElementById("cards").hidden = false;
  const providers = [...new Set(catalog.models.flatMap((m) => m.providers || []))].join(", ");
  status.textContent = `${plural(catalog.models.length, "model")} served on onnxruntime ${catalog.onnxruntime} (${providers}).`;
  document.body.dataset.ready = "true";
}

document.addEventListener("DOMContentLoaded", load);

"""GET /playground in a real browser: headless Debian Chromium (Selenium) on a real `bentoml serve`.

The page is generic over GET /models, so the tests ask /models (by kind) what to expect and
ask the API itself, over HTTP, what it answers for the same input: a number or message on the
page must be the API's. `.ci/run` installs chromium and chromium-driver, so on CI these run.
The plot route and the /models additions are tested over plain HTTP.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from benchmarks.launch import ROOT, Server, start_server
from service.core.catalog import RECIPES
from service.core.registry import Registry
from service.core.runtime import load_model
from tests.browser import chromium, chromium_paths, open_playground, wait_for
from tests.conftest import FIXTURES, SHIPPED_MODELS

pytestmark = pytest.mark.e2e

CAT, DOG = FIXTURES / "cat.jpg", FIXTURES / "dog.jpg"
STATIC = ROOT / "service" / "http" / "static"
POSITIVE = "A moving, beautifully acted film. I loved every minute of it and would watch it again."
NEGATIVE = "Dull, predictable and far too long. The worst film I have seen this year, a waste of time."
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

needs_chromium = pytest.mark.skipif(
    chromium_paths() is None, reason="Debian's chromium and chromium-driver are not installed (bash .ci/run installs them)"
)


@pytest.fixture(scope="module")
def models(client: httpx.Client) -> dict[str, dict[str, Any]]:
    """The served models by kind (the page's view of them)."""
    return {m["kind"]: m for m in client.get("/models").json()["models"]}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = chromium(1280, 900)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser: Any, server: Server) -> Any:
    browser.set_window_size(1280, 900)
    open_playground(browser, server.url)
    browser.get_log("browser")  # start each test with an empty console
    return browser


def panel(page: Any, kind: str) -> Any:
    return page.find_element(By.CSS_SELECTOR, f".panel[data-kind={kind}]")


def text_of(page: Any, element: Any) -> str:
    return page.execute_script("return arguments[0].textContent", element).strip()


def upload(page: Any, paths: list[Path]) -> None:
    panel(page, "image_classification").find_element(By.CSS_SELECTOR, "input[type=file]").send_keys("\n".join(str(p) for p in paths))


def api_images(client: httpx.Client, model: dict[str, Any], paths: list[Path]) -> httpx.Response:
    field = model["request"]["field"]
    return client.post(model["endpoint"], files=[(field, (p.name, p.read_bytes(), "image/jpeg")) for p in paths])


def shown_range(hint: str) -> tuple[float, float]:
    """The two numbers of a field's range hint, e.g. "≈ 0.0063 to 88.98" (drawn with an en dash)."""
    low, high = (float(x) for x in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", hint)[:2])
    return low, high


def severe_console_lines(page: Any) -> list[str]:
    return [entry["message"] for entry in page.get_log("browser") if entry["level"] == "SEVERE"]


# ------------------------------------------------------------------ over HTTP


def test_page_and_its_files_are_served_from_the_package_with_nothing_from_outside(client: httpx.Client) -> None:
    response = client.get("/playground")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    for name in ("playground.js", "playground.css", "favicon.svg"):
        assert client.get(f"/playground/static/{name}").content == (STATIC / name).read_bytes()
    assert client.get("/playground/static/../playground.py").status_code == 404
    assert client.get("/playground/").status_code == 307
    for path in STATIC.iterdir():
        text = re.sub(r'xmlns="[^"]*"', "", path.read_text())  # an SVG's namespace is a name, not a fetch
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text), f"{path.name} refers to another site"
    assert client.get("/").status_code == 200, "Swagger UI stays at /"


def test_models_says_how_to_call_each_model(models: dict[str, dict[str, Any]]) -> None:
    assert set(models) == {"image_classification", "text_classification", "tabular_regression"}
    for model in models.values():
        assert model["endpoint"].startswith("/") and model["request"]["field"] and model["plots"]
    text = models["text_classification"]["request"]
    assert [text["negative"], text["positive"]] == models["text_classification"]["labels"]
    table = models["tabular_regression"]["request"]
    assert [f["name"] for f in table["features"]] == models["tabular_regression"]["preprocessing"]["features"]
    assert all(f["min"] < f["max"] for f in table["features"]) and table["unit"] == "$1000s"
    # The served v2 records the training ranges and a real test row; v1 predates both, and its estimate says so.
    assert table["range_seen"] is True and table["example"]["real"] is True
    v1 = load_model(Registry(SHIPPED_MODELS).get("boston_housing", 1), ["CPUExecutionProvider"]).describe()["request"]
    assert v1["range_seen"] is False and "mean ± 2 std" in v1["range_source"]
    assert v1["example"]["real"] is False and "training mean" in v1["example"]["source"]


def test_plots_are_served_only_when_the_version_lists_them(client: httpx.Client, models: dict[str, dict[str, Any]]) -> None:
    for model in models.values():
        version = Registry(SHIPPED_MODELS).get(model["name"], model["version"])
        for plot in model["plots"]:
            response = client.get(f"/models/{model['name']}/versions/{model['version']}/plots/{plot}")
            assert response.status_code == 200 and response.headers["content-type"] == "image/png"
            assert response.content.startswith(PNG_SIGNATURE) and response.content == (version.path / plot).read_bytes()
    name, version = models["tabular_regression"]["name"], models["tabular_regression"]["version"]
    base = f"/models/{name}/versions/{version}/plots"
    refused = [
        f"{base}/metadata.json",  # on disk, not a plot
        f"{base}/model.onnx",
        f"{base}/scaler.json",
        f"{base}/nope.png",
        f"{base}/..%2FCURRENT",
        f"{base}/%2e%2e%2f%2e%2e%2f%2e%2e%2fpyproject.toml",
        f"{base}/..%5C..%5Cpyproject.toml",
        f"/models/{name}/versions/{version}/plots/../../../../pyproject.toml",
        f"/models/{name}/versions/999/plots/history.png",
        f"/models/{name}/versions/x/plots/history.png",
        f"/models/..%2F{name}/versions/{version}/plots/history.png",
        "/models/not_a_model/versions/1/plots/history.png",
    ]
    for path in refused:
        response = client.get(path)
        assert response.status_code == 404, (path, response.status_code, response.text[:200])
        assert not response.content.startswith(PNG_SIGNATURE) and b"schema_version" not in response.content


# ------------------------------------------------------------------ in the browser


@needs_chromium
def test_one_panel_and_card_per_served_model_with_a_clean_console(page: Any, models: dict[str, dict[str, Any]]) -> None:
    panels = {p.get_attribute("data-model"): p.get_attribute("data-kind") for p in page.find_elements(By.CSS_SELECTOR, ".panel")}
    assert panels == {m["name"]: kind for kind, m in models.items()}
    headings = [h.text for h in page.find_elements(By.CSS_SELECTOR, ".panel h2")]
    assert all(name in heading for name, heading in zip(panels, headings, strict=True)), "each panel names its model (issue 23, 6)"
    cards = [c.get_attribute("data-model") for c in page.find_elements(By.CSS_SELECTOR, "details.card")]
    assert sorted(cards) == sorted(panels)
    origins = page.execute_script("return performance.getEntriesByType('resource').map(e => new URL(e.name).origin)")
    assert set(origins) <= {page.execute_script("return location.origin")}, origins
    unlabelled = page.execute_script(
        "return [...document.querySelectorAll('input, textarea')].filter(e => !e.labels.length && !e.getAttribute('aria-label')).map(e => e.outerHTML)"
    )
    assert unlabelled == []
    assert severe_console_lines(page) == []


@needs_chromium
def test_photos_get_their_label_a_bar_per_class_and_the_answering_version(
    page: Any, client: httpx.Client, models: dict[str, dict[str, Any]]
) -> None:
    model = models["image_classification"]
    upload(page, [CAT, DOG])
    wait_for(page, "return document.querySelectorAll('.thumb[data-label]').length === 2")
    expected = api_images(client, model, [CAT, DOG]).json()
    thumbs = panel(page, "image_classification").find_elements(By.CSS_SELECTOR, ".thumb")
    assert [t.get_attribute("data-label") for t in thumbs] == ["cats", "dogs"] == [a["label"] for a in expected]
    for thumb, answer in zip(thumbs, expected):
        assert page.execute_script("return arguments[0].querySelector('img').naturalWidth", thumb) > 0, "the thumbnail shows the photo"
        bars = thumb.find_elements(By.CSS_SELECTOR, ".bar")
        assert [b.get_attribute("aria-label") for b in bars] == [f"probability of {label}" for label in model["labels"]]
        shown = [float(b.get_attribute("aria-valuenow")) for b in bars]
        assert shown == pytest.approx([100 * answer["probabilities"][label] for label in model["labels"]], abs=0.051)
        top = thumb.find_element(By.CSS_SELECTOR, ".bar-row.top .fill")
        assert top.size["width"] > 0.5 * thumb.find_element(By.CSS_SELECTOR, ".bar-row.top .bar").size["width"]
        assert f"{answer['model']} v{answer['version']}" in text_of(page, thumb.find_element(By.CSS_SELECTOR, ".answered-by"))
    assert severe_console_lines(page) == []


@needs_chromium
def test_a_corrupt_file_shows_the_apis_message_next_to_it_and_the_others_are_still_classified(
    page: Any, client: httpx.Client, models: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(CAT.read_bytes()[: CAT.stat().st_size // 2])
    refused = api_images(client, models["image_classification"], [broken, CAT])
    assert refused.status_code == 400
    field = models["image_classification"]["request"]["field"]
    message = re.sub(rf"^{field}\[0\][^:;]*:\s*", "", refused.json()["error"])
    upload(page, [broken, CAT])
    wait_for(page, "return document.querySelector('.thumb[data-label]') && document.querySelector('.thumb.failed')")
    bad, good = panel(page, "image_classification").find_elements(By.CSS_SELECTOR, ".thumb")
    error = bad.find_element(By.CSS_SELECTOR, ".item-error")
    assert error.is_displayed() and text_of(page, error) == message and "corrupt" in message
    assert bad.get_attribute("data-file") == "broken.jpg" and good.get_attribute("data-label") == "cats"
    assert "refused 1 image" in text_of(page, panel(page, "image_classification").find_element(By.CSS_SELECTOR, ".note"))


@needs_chromium
def test_pasted_reviews_get_their_label_and_probability_of_positive(
    page: Any, client: httpx.Client, models: dict[str, dict[str, Any]]
) -> None:
    model = models["text_classification"]
    area = panel(page, "text_classification").find_element(By.CSS_SELECTOR, "textarea")
    area.clear()
    area.send_keys(POSITIVE, Keys.ENTER, Keys.ENTER, NEGATIVE)
    panel(page, "text_classification").find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(page, "return document.querySelectorAll('.text-result').length === 2")
    expected = client.post(model["endpoint"], json={model["request"]["field"]: [POSITIVE, NEGATIVE]}).json()
    results = panel(page, "text_classification").find_elements(By.CSS_SELECTOR, ".text-result")
    assert [r.get_attribute("data-label") for r in results] == [model["request"]["positive"], model["request"]["negative"]]
    assert [a["label"] for a in expected] == [r.get_attribute("data-label") for r in results]
    for result, answer in zip(results, expected):
        meter = result.find_element(By.CSS_SELECTOR, ".bar")
        assert float(meter.get_attribute("aria-valuenow")) == pytest.approx(100 * answer["probability_positive"], abs=0.051)
        assert meter.get_attribute("aria-label") == f"probability of {model['request']['positive']}"


@needs_chromium
def test_an_empty_review_shows_the_apis_message_next_to_the_text_area(
    page: Any, client: httpx.Client, models: dict[str, dict[str, Any]]
) -> None:
    model = models["text_classification"]
    expected = client.post(model["endpoint"], json={model["request"]["field"]: [""]})
    assert expected.status_code == 400
    area = panel(page, "text_classification").find_element(By.CSS_SELECTOR, "textarea")
    area.clear()
    panel(page, "text_classification").find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    error = wait_for(page, "return document.getElementById(arguments[0].getAttribute('aria-describedby').split(' ')[1])", area)
    wait_for(page, "return !arguments[0].hidden", error)
    assert re.sub(rf"^{model['request']['field']}\[0\][^:;]*:\s*", "", expected.json()["error"]) in text_of(page, error)
    assert area.get_attribute("aria-invalid") == "true"


def _form_row(page: Any, without: str | None = None) -> dict[str, float]:
    """The house form's values by feature name (the ones not empty), as the API takes them."""
    inputs = panel(page, "tabular_regression").find_elements(By.CSS_SELECTOR, ".field input")
    return {i.get_attribute("name"): float(i.get_attribute("value")) for i in inputs if i.get_attribute("name") != without}


@needs_chromium
def test_the_house_form_shows_every_feature_with_its_range_and_predicts_with_the_unit(
    page: Any, client: httpx.Client, models: dict[str, dict[str, Any]]
) -> None:
    model = models["tabular_regression"]
    request = model["request"]
    fields = panel(page, "tabular_regression").find_elements(By.CSS_SELECTOR, ".field")
    assert [f.get_attribute("data-feature") for f in fields] == [f["name"] for f in request["features"]]
    assert all(f.get("description") for f in request["features"]), "the served version records what each feature means"
    for field, feature in zip(fields, request["features"]):
        assert field.find_element(By.CSS_SELECTOR, "label").text == feature["name"]
        # Issue 23, 6: the form showed bare codes (CRIM, B, LSTAT); the meaning comes from the version's metadata.
        assert text_of(page, field.find_element(By.CSS_SELECTOR, ".meaning")) == feature["description"]
        hint = text_of(page, field.find_element(By.CSS_SELECTOR, ".range"))
        low, high = shown_range(hint)
        assert low == pytest.approx(feature["min"], rel=1e-3, abs=1e-9) and high == pytest.approx(feature["max"], rel=1e-3)
        assert hint.startswith("≈") != request["range_seen"], "an estimated range is marked as one"
    row = _form_row(page)
    assert row == pytest.approx(request["example"]["values"], rel=1e-3)
    panel(page, "tabular_regression").find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    value = wait_for(page, "return document.querySelector('.prediction .value')")
    expected = client.post(model["endpoint"], json={request["field"]: [row]}).json()[0]
    assert text_of(page, value) == f"{expected[request['answer_field']]:.2f}"
    assert text_of(page, panel(page, "tabular_regression").find_element(By.CSS_SELECTOR, ".prediction .unit")) == request["unit"]


@needs_chromium
def test_a_missing_feature_shows_the_apis_message_under_that_field(
    page: Any, client: httpx.Client, models: dict[str, dict[str, Any]]
) -> None:
    model = models["tabular_regression"]
    name = model["request"]["features"][5]["name"]
    field = panel(page, "tabular_regression").find_element(By.CSS_SELECTOR, f".field[data-feature={name}]")
    field.find_element(By.CSS_SELECTOR, "input").clear()
    row = _form_row(page, without=name)
    expected = client.post(model["endpoint"], json={model["request"]["field"]: [row]})
    assert expected.status_code == 400 and name in expected.json()["error"]
    panel(page, "tabular_regression").find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    error = field.find_element(By.CSS_SELECTOR, ".field-error")
    wait_for(page, "return !arguments[0].hidden", error)
    shown = text_of(page, error)
    assert name in shown and "missing" in shown and shown in expected.json()["error"]
    assert field.find_element(By.CSS_SELECTOR, "input").get_attribute("aria-invalid") == "true"
    others = panel(page, "tabular_regression").find_elements(By.CSS_SELECTOR, f".field:not([data-feature={name}]) .field-error")
    assert not any(e.is_displayed() for e in others)


@needs_chromium
def test_model_cards_show_version_metrics_providers_and_load_their_plots(page: Any, models: dict[str, dict[str, Any]]) -> None:
    for model in models.values():
        card = page.find_element(By.CSS_SELECTOR, f"#card-{model['name']}")
        assert card.get_attribute("open") is None, "cards start closed (their plots load when opened)"
        card.find_element(By.CSS_SELECTOR, "summary").click()
        images = card.find_elements(By.CSS_SELECTOR, ".plot img")
        assert [i.find_element(By.XPATH, "../..").get_attribute("data-plot") for i in images] == model["plots"]
        wait_for(page, "return arguments[0].every(i => i.complete && i.naturalWidth > 0)", images)
        assert "history.png" in model["plots"]
        body = text_of(page, card)
        assert f"v{model['version']}" in body and model["data"]["dataset"] in body
        assert all(p in body for p in model["providers"])
        assert f"runs {model['model_file']['file']} ({model['model_file']['precision']})" in body, (
            "the file the session runs (INT8 or fp32)"
        )
        for metric in model["metrics"]["test"]:
            assert metric in body
    assert severe_console_lines(page) == []


@needs_chromium
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_copy_as_curl_reproduces_the_last_request(page: Any, models: dict[str, dict[str, Any]]) -> None:
    upload(page, [CAT, DOG])
    wait_for(page, "return document.querySelectorAll('.thumb[data-label]').length === 2")
    panel(page, "text_classification").find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(page, "return document.querySelectorAll('.text-result').length === 2")
    for kind, cwd in (("image_classification", FIXTURES), ("text_classification", ROOT)):
        command = page.execute_script("return arguments[0].querySelector('.curl code').textContent", panel(page, kind))
        answer = json.loads(subprocess.run(["bash", "-c", f"{command} -s"], cwd=cwd, capture_output=True, text=True, check=True).stdout)
        labels = [r.get_attribute("data-label") for r in panel(page, kind).find_elements(By.CSS_SELECTOR, "[data-label]")]
        assert [a["label"] for a in answer] == labels, command


@needs_chromium
def test_keyboard_alone_sends_a_review(page: Any) -> None:
    area = panel(page, "text_classification").find_element(By.CSS_SELECTOR, "textarea")
    page.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
    for _ in range(40):
        ActionChains(page).send_keys(Keys.TAB).perform()
        if page.switch_to.active_element == area:
            break
    assert page.switch_to.active_element == area, "Tab reaches the text area"
    area.send_keys(Keys.CONTROL, "a", Keys.NULL, POSITIVE)
    ActionChains(page).send_keys(Keys.TAB).perform()
    assert page.switch_to.active_element.get_attribute("type") == "submit"
    ActionChains(page).send_keys(Keys.ENTER).perform()
    result = wait_for(page, "return document.querySelector('.text-result')")
    assert result.get_attribute("data-label") == "positive"


@needs_chromium
def test_readable_at_phone_width(browser: Any, server: Server) -> None:
    browser.set_window_size(390, 844)
    try:
        open_playground(browser, server.url)
        upload(browser, [CAT])
        wait_for(browser, "return document.querySelector('.thumb[data-label]')")
        overflow = browser.execute_script("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{overflow}px of horizontal scrolling at phone width"
        width = browser.execute_script("return document.documentElement.clientWidth")
        for element in browser.find_elements(By.CSS_SELECTOR, ".panel, .field input, textarea, .thumb"):
            assert element.rect["x"] >= 0 and element.rect["x"] + element.rect["width"] <= width + 0.5
    finally:
        browser.set_window_size(1280, 900)


# ------------------------------------------------------------------ a version trained now: real ranges and a real row


@pytest.fixture(scope="module")
def trained_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A registry with one tabular version trained by the real trainer (small), promoted and served."""
    pytest.importorskip("tensorflow")
    from tests.generate import write_housing_csv
    from training.__main__ import main

    name = next(e.name for e in RECIPES.values() if e.task.name == "tabular_regression")
    root = tmp_path_factory.mktemp("registry")
    data = write_housing_csv(root.parent / "housing.csv", n=300)
    assert main([name, "--data", str(data), "--registry", str(root), "--epochs", "5", "--folds", "2", "--ensemble", "1"]) == 0
    Registry(root).promote(name, 1)
    server = start_server(root, tmp_path_factory.mktemp("serve-trained") / "server.log")
    yield server, name
    server.stop()


@needs_chromium
def test_a_new_version_shows_the_training_range_and_a_real_row(browser: Any, trained_server: tuple[Server, str]) -> None:
    server, name = trained_server
    model = next(m for m in httpx.get(f"{server.url}/models").json()["models"] if m["name"] == name)
    request = model["request"]
    assert request["range_seen"] is True and request["example"]["real"] is True
    open_playground(browser, server.url)
    tabular = panel(browser, "tabular_regression")
    assert _form_row(browser) == pytest.approx(request["example"]["values"], rel=1e-3)
    for field, feature in zip(tabular.find_elements(By.CSS_SELECTOR, ".field"), request["features"]):
        hint = text_of(browser, field.find_element(By.CSS_SELECTOR, ".range"))
        assert not hint.startswith("≈") and shown_range(hint) == pytest.approx((feature["min"], feature["max"]), rel=1e-3, abs=1e-9)
    intro = text_of(browser, tabular.find_element(By.CSS_SELECTOR, ".panel > .hint"))
    assert request["example"]["source"] in intro and f"true {request['answer_field']}" in intro
    tabular.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    assert wait_for(browser, "return document.querySelector('.prediction .value')")

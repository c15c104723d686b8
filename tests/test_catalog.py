"""Your models, not only ours: train by kind on your own data, add it to the registry, and it is served.

Three models trained here by the training CLI on generated data unlike the shipped
models' (three colour folders, support tickets for four teams, crop yields with a soil
category), promoted in a registry of their own, then copied into the registry of a
running `bentoml serve` that started with one shipped model: no restart. Each answers on
its friendly route and the Open Inference Protocol, the batch scorer gives the same
answers, a bad one is refused with its reason, a removed one is a 404 while the others
keep serving, and a retrain with its recorded recipe is gated, promoted and served.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from benchmarks.launch import ROOT, Server, start_server
from service.batch import cli as batch_cli
from service.core import errors as codes
from service.core.registry import MODEL_FILE, Registry
from tests.eager import eager_tensorflow
from tests.generate import (
    THREE_COLOURS,
    class_image,
    crop_rows,
    image_bytes,
    ticket,
    write_class_folders,
    write_crops_csv,
    write_reviews_csv,
    write_tickets_csv,
)
from tests.sparkconf import conf_args
from training.__main__ import main as train_main
from training.redeploy import main as redeploy_main

# TensorFlow is imported by the first test that trains, not when the tests are collected (pytest -m unit does not wait for it).
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="pip install -e '.[train]'")]

TOKEN = "catalog-test-token"
SHIPPED = "boston_housing"  # the one shipped model the server starts with
IMAGE, TEXT, TABLE = "colours", "tickets", "crop-yield"
TRAIN = {
    IMAGE: ["image", "--name", IMAGE, "--base", "mobilenet", "--alpha", "0.25", "--weights", "none", "--image-size", "32",
            "--epochs", "2", "--batch-size", "16", "--no-int8"],
    TEXT: ["text", "--name", TEXT, "--text-column", "message", "--label-column", "team", "--epochs", "15", "--batch-size", "16",
           "--max-tokens", "500"],
    TABLE: ["tabular", "--name", TABLE, "--target", "yield_t_ha", "--features", "soil", "rain_mm", "temp_c", "fertilizer_kg",
            "--unit", "t/ha", "--epochs", "30", "--folds", "2", "--ensemble", "1"],
}  # fmt: skip
WAIT_S = 60
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {
        IMAGE: write_class_folders(root / "colours", per_class=20),
        TEXT: write_tickets_csv(root / "tickets.csv", n=200),
        TABLE: write_crops_csv(root / "crops.csv", n=240),
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, data: dict[str, Path]) -> Path:
    """A registry with the three models, each trained by the CLI and promoted (not served by anyone yet)."""
    root = tmp_path_factory.mktemp("trained")
    for name, args in TRAIN.items():
        with eager_tensorflow() if name == IMAGE else contextlib.nullcontext():  # tests/eager.py
            assert train_main([*args, "--data", str(data[name]), "--registry", str(root)]) == 0, name
        assert train_main(["promote", name, "1", "--registry", str(root)]) == 0
    return root


@pytest.fixture(scope="module")
def served_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("served")
    shutil.copytree(ROOT / "models" / SHIPPED, root / SHIPPED)
    return root


@pytest.fixture(scope="module")
def server(served_root: Path, trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Started on the shipped model alone; the three are copied in while it runs (as `cp -r` would, file by file)."""
    server = start_server(
        served_root, tmp_path_factory.mktemp("serve") / "server.log", grpc=True, MODELSERVE_RELOAD_POLL_S="1", MODELSERVE_ADMIN_TOKEN=TOKEN
    )
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert [m["name"] for m in client.get("/models").json()["models"]] == [SHIPPED]
    for name in TRAIN:
        shutil.copytree(trained / name, served_root / name)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        wait_until(client, lambda models: set(TRAIN) <= set(models))
        yield client


def served(client: httpx.Client) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in client.get("/models").json()["models"]}


def wait_until(client: httpx.Client, condition: Any, deadline_s: float = WAIT_S) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + deadline_s
    while True:
        models = served(client)
        if condition(models):
            return models
        assert time.monotonic() < deadline, f"not within {deadline_s} s; served: {sorted(models)}"
        time.sleep(0.5)


def colour_pngs(n: int = 3) -> list[bytes]:
    rng = np.random.default_rng(5)
    colours = list(THREE_COLOURS.values())
    return [image_bytes(class_image(rng, colours[i % 3], 40), "PNG") for i in range(n)]


def tickets(n: int = 4) -> list[str]:
    rng = np.random.default_rng(5)
    return [ticket(rng, team) for team in ("billing", "login", "shipping", "hardware")[:n]]


def v2_infer(
    client: httpx.Client, name: str, tensor: str, datatype: str, data: list[Any], shape: list[int] | None = None
) -> dict[str, Any]:
    body = {"inputs": [{"name": tensor, "datatype": datatype, "shape": shape or [len(data)], "data": data}]}
    response = client.post(f"/v2/models/{name}/infer", json=body)
    assert response.status_code == 200, response.text
    return {o["name"]: o["data"] for o in response.json()["outputs"]}


# ---------------------------------------------------------------- served without a restart, by kind


def test_models_added_to_the_registry_are_served_by_their_kind(client: httpx.Client) -> None:
    models = served(client)
    assert models[IMAGE]["kind"] == "image_classification" and models[IMAGE]["labels"] == ["blue", "green", "red"]
    assert models[TEXT]["kind"] == "text_classification" and models[TEXT]["labels"] == ["billing", "hardware", "login", "shipping"]
    assert models[TEXT]["request"]["labels"] == models[TEXT]["labels"], "multi-class: every label, no positive/negative"
    table = models[TABLE]["request"]
    assert models[TABLE]["kind"] == "tabular_regression" and table["answer_field"] == "yield_t_ha" and table["unit"] == "t/ha"
    assert table["features"][0] == {"name": "soil", "categories": ["clay", "loam", "sand"]}
    for name in TRAIN:
        assert models[name]["endpoint"] == models[name]["predict_endpoint"] == f"/models/{name}/predict"
        assert client.get(f"/models/{name}").json()["version"] == 1
    assert models[SHIPPED]["endpoint"] != models[SHIPPED]["predict_endpoint"], "a shipped model keeps its own endpoint too"


def test_images_on_the_friendly_route_and_v2_agree(client: httpx.Client) -> None:
    pngs = colour_pngs()
    multipart = client.post(f"/models/{IMAGE}/predict", files=[("images", (f"i{k}.png", b, "image/png")) for k, b in enumerate(pngs)])
    assert multipart.status_code == 200, multipart.text
    as_json = client.post(f"/models/{IMAGE}/predict", json={"images": [base64.b64encode(b).decode() for b in pngs]}).json()
    v2 = v2_infer(client, IMAGE, "images", "BYTES", [base64.b64encode(b).decode() for b in pngs])
    for k, answer in enumerate(multipart.json()):
        assert answer["label"] in ("blue", "green", "red") and (answer["model"], answer["version"]) == (IMAGE, 1)
        assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert as_json[k] == answer
        assert v2["label"][k] == answer["label"] and v2["score"][k] == pytest.approx(answer["score"], abs=TOLERANCE)
        assert v2["probabilities"][3 * k : 3 * k + 3] == pytest.approx(list(answer["probabilities"].values()), abs=TOLERANCE)


def test_multiclass_texts_on_the_friendly_route_and_v2_agree(client: httpx.Client) -> None:
    texts = tickets()
    answers = client.post(f"/models/{TEXT}/predict", json={"texts": texts}).json()
    assert [a["label"] for a in answers] == ["billing", "login", "shipping", "hardware"], "separable tickets, learnt"
    v2 = v2_infer(client, TEXT, "texts", "BYTES", texts)
    assert v2["label"] == [a["label"] for a in answers]
    assert v2["score"] == pytest.approx([a["score"] for a in answers], abs=TOLERANCE)
    assert v2["probabilities"][:4] == pytest.approx(list(answers[0]["probabilities"].values()), abs=TOLERANCE)


def test_grpc_answers_a_model_of_your_own_as_rest_does(server: Server, client: httpx.Client) -> None:
    import grpc

    from service.grpc import inference_pb2 as pb
    from service.grpc import inference_pb2_grpc as pb_grpc

    texts = tickets()
    request = pb.ModelInferRequest(model_name=TEXT)
    request.inputs.add(name="texts", datatype="BYTES", shape=[len(texts)]).contents.bytes_contents.extend(t.encode() for t in texts)
    assert server.grpc_address is not None
    with grpc.insecure_channel(server.grpc_address) as channel:
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    outputs = {o.name: o for o in reply.outputs}
    labels = [b.decode() for b in outputs["label"].contents.bytes_contents] if outputs["label"].contents.bytes_contents else None
    if labels is None:  # raw output contents, in output order: 4-byte length-prefixed BYTES
        raw, labels, at = reply.raw_output_contents[list(outputs).index("label")], [], 0
        while at < len(raw):
            size = int.from_bytes(raw[at : at + 4], "little")
            labels.append(raw[at + 4 : at + 4 + size].decode())
            at += 4 + size
    assert labels == [a["label"] for a in client.post(f"/models/{TEXT}/predict", json={"texts": texts}).json()]


def test_rows_with_a_category_on_the_friendly_route_and_v2_agree(client: httpx.Client) -> None:
    rows, truth = crop_rows(6, seed=11)
    as_lists = [[r["soil"], r["rain_mm"], r["temp_c"], r["fertilizer_kg"]] for r in rows]
    by_name = client.post(f"/models/{TABLE}/predict", json={"rows": rows}).json()
    by_position = client.post(f"/models/{TABLE}/predict", json={"rows": as_lists}).json()
    assert by_name == by_position
    predicted = np.array([a["yield_t_ha"] for a in by_name])
    assert all(a["unit"] == "t/ha" for a in by_name)
    assert np.abs(predicted - truth).mean() < 0.5 * np.abs(truth - truth.mean()).mean(), "learnt, soil included"
    v2 = v2_infer(client, TABLE, "rows", "BYTES", [json.dumps(r) for r in rows])
    assert v2["yield_t_ha"] == pytest.approx(predicted.tolist(), abs=TOLERANCE)
    loam, clay = rows[0] | {"soil": "loam"}, rows[0] | {"soil": "clay"}
    pair = client.post(f"/models/{TABLE}/predict", json={"rows": [loam, clay]}).json()
    assert pair[0]["yield_t_ha"] > pair[1]["yield_t_ha"], "the category reaches the model (loam yields more than clay)"


def test_bad_requests_are_refused_with_what_was_wrong(client: httpx.Client) -> None:
    row = crop_rows(1)[0][0]
    cases = [
        (f"/models/{TABLE}/predict", {"json": {"rows": [row | {"soil": "peat"}]}}, 400, "rows[0]: feature soil is 'peat', not a category"),
        (
            f"/models/{TABLE}/predict",
            {"json": {"rows": [{"soil": "clay"}]}},
            400,
            "missing features ['rain_mm', 'temp_c', 'fertilizer_kg']",
        ),
        (f"/models/{TEXT}/predict", {"json": {"texts": ["fine", ""]}}, 400, "texts[1]: is empty"),
        (f"/models/{TEXT}/predict", {"json": {"images": ["x"]}}, 400, '{"texts": [...]}'),
        (f"/models/{TEXT}/predict", {"json": {"texts": []}}, 400, "texts: send a list of 1 to"),
        (f"/models/{TEXT}/predict", {"files": [("texts", ("a.txt", b"hello"))]}, 400, "only images take files"),
        (f"/models/{IMAGE}/predict", {"files": [("images", ("a.png", b"not an image"))]}, 400, "images[0]: is not a supported image"),
        (f"/models/{IMAGE}/predict", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415, "is not accepted"),
        ("/models/nobody/predict", {"json": {"texts": ["x"]}}, 404, "not served here"),
        ("/v2/models/nobody/infer", {"json": {"inputs": []}}, 404, "not served here"),
    ]
    for path, request, status, words in cases:
        response = client.post(path, **request)
        assert response.status_code == status and words in response.json()["error"], (path, response.text)
    assert client.post(f"/models/{TEXT}/predict", json={"texts": tickets(1)}).status_code == 200, "still serving"


def test_the_batch_scorer_gives_the_http_answers(client: httpx.Client, served_root: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for k, png in enumerate(colour_pngs()):
        (images / f"{k}.png").write_bytes(png)
    texts, (rows, _) = tickets(), crop_rows(5, seed=3)
    with open(tmp_path / "tickets.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["message"], *([t] for t in texts)])
    with open(tmp_path / "crops.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    jobs = {
        IMAGE: (images, {"images": [(images / f"{k}.png").read_bytes() for k in range(3)]}),
        TEXT: (tmp_path / "tickets.csv", {"texts": texts}),
        TABLE: (tmp_path / "crops.csv", {"rows": rows}),
    }
    for name, (source, body) in jobs.items():
        out = tmp_path / f"{name}.jsonl"
        stream = io.StringIO()
        args = [name, str(source), "-o", str(out), "--model-root", str(served_root), "--executor", "thread", "--workers", "1"]
        assert batch_cli.main(args, stream=stream) == 0, stream.getvalue()
        scored = [json.loads(line) for line in out.read_text().splitlines()]
        if name == IMAGE:
            response = client.post(f"/models/{name}/predict", files=[("images", (f"{k}.png", b)) for k, b in enumerate(body["images"])])
        else:
            response = client.post(f"/models/{name}/predict", json=body)
        for row, answer in zip(scored, response.json(), strict=True):
            for key, value in answer.items():
                assert row[key] == (pytest.approx(value, abs=TOLERANCE) if isinstance(value, float | dict) else value), (name, key)


def test_a_bad_new_model_is_refused_with_its_reason(client: httpx.Client, served_root: Path, trained: Path) -> None:
    shutil.copytree(trained / TEXT, served_root / "tickets-broken")
    with open(served_root / "tickets-broken" / "1" / MODEL_FILE, "r+b") as handle:
        handle.write(b"garbage")
    shutil.copytree(trained / TEXT, served_root / "Tickets Copy")
    deadline = time.monotonic() + WAIT_S
    while True:
        refused = client.get("/models").json()["refused_reloads"]
        if {"tickets-broken", "Tickets Copy"} <= set(refused):
            break
        assert time.monotonic() < deadline, refused
        time.sleep(0.5)
    assert "checksum mismatch" in refused["tickets-broken"]["reason"]
    assert "is not allowed" in refused["Tickets Copy"]["reason"]
    missing = client.get("/models/tickets-broken")
    assert missing.status_code == 404 and "checksum mismatch" in missing.json()["error"]
    assert set(served(client)) == {SHIPPED, *TRAIN}, "nothing else changed"
    shutil.rmtree(served_root / "tickets-broken")
    shutil.rmtree(served_root / "Tickets Copy")


def series(client: httpx.Client, metric: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(client.get("/metrics").text)
    return sum(s.value for f in families for s in f.samples if s.name == metric and labels.items() <= s.labels.items())


def test_per_model_series_on_metrics(client: httpx.Client) -> None:
    assert client.post(f"/models/{TEXT}/predict", json={"texts": tickets(1)}).status_code == 200
    assert client.post(f"/models/{TABLE}/predict", json={"rows": crop_rows(2)[0]}).status_code == 200
    deadline = time.monotonic() + WAIT_S
    while series(client, "modelserve_requests_total", model=TEXT, version="1", outcome="ok") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert series(client, "modelserve_predicted_labels_total", model=TEXT, label="billing") >= 1
    assert series(client, "modelserve_predicted_value_count", model=TABLE, version="1") >= 2


def test_spark_submit_scores_a_model_of_your_own(served_root: Path, tmp_path: Path) -> None:
    """`spark-submit service/batch/spark.py` as a user runs it: the categorical column is read as text, a cell that is no
    number is refused with the HTTP reason, and the answers equal the single-machine scorer's."""
    pyspark = pytest.importorskip("pyspark", reason="pip install -e '.[spark]'")
    if shutil.which("java") is None:
        pytest.skip("Spark needs Java 17+ (bash .ci/run installs it)")
    rows, _ = crop_rows(12, seed=4)
    rows[5]["rain_mm"] = "lots"
    with open(tmp_path / "crops.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    command = [str(submit), "--master", "local[1]", *conf_args(), str(ROOT / "service" / "batch" / "spark.py")]
    command += [TABLE, str(tmp_path / "crops.csv"), "-o", str(tmp_path / "spark.jsonl"), "--model-root", str(served_root)]
    env = os.environ | {"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr  # spark-submit passes the Python driver's stderr on as its stdout
    assert done.returncode == codes.EXIT_ROWS_FAILED, output[-3000:]
    assert "12 rows in = 11 scored + 1 failed" in output, output[-3000:]
    local = ["--model-root", str(served_root), "--executor", "thread"]
    assert (
        batch_cli.main([TABLE, str(tmp_path / "crops.csv"), "-o", str(tmp_path / "local.jsonl"), *local], stream=io.StringIO())
        == codes.EXIT_ROWS_FAILED
    )
    outputs = {}
    for engine, out in (("spark", tmp_path / "spark.jsonl"), ("local", tmp_path / "local.jsonl")):
        files = sorted(out.glob("part-*")) if out.is_dir() else [out]
        outputs[engine] = sorted((json.loads(line) for f in files for line in f.read_text().splitlines()), key=lambda r: r["row"])
    assert [r["yield_t_ha"] for r in outputs["spark"]] == pytest.approx([r["yield_t_ha"] for r in outputs["local"]], abs=TOLERANCE)
    assert len(outputs["spark"]) == 11
    errors = [json.loads(line) for f in sorted((tmp_path / "spark.errors.jsonl").glob("part-*")) for line in f.read_text().splitlines()]
    assert [(e["row"], e["reason"]) for e in errors] == [(5, "row: feature rain_mm must be a number, got str")], errors


def test_the_playground_has_a_panel_for_each_model_trained_here(server: Server, client: httpx.Client) -> None:
    from selenium.webdriver.common.by import By

    from tests.browser import chromium, chromium_paths, open_playground, wait_for

    if chromium_paths() is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed (bash .ci/run installs them)")
    browser = chromium(1280, 900)
    try:
        open_playground(browser, server.url)
        panels = {p.get_attribute("data-model"): p.get_attribute("data-kind") for p in browser.find_elements(By.CSS_SELECTOR, ".panel")}
        assert panels == {name: model["kind"] for name, model in served(client).items()}
        soil = browser.find_element(By.CSS_SELECTOR, f"#panel-{TABLE} select[name=soil]")
        assert [o.get_attribute("value") for o in soil.find_elements(By.TAG_NAME, "option")] == ["clay", "loam", "sand"]
        text = browser.find_element(By.CSS_SELECTOR, f"#panel-{TEXT}")
        area = text.find_element(By.TAG_NAME, "textarea")
        area.clear()
        area.send_keys(tickets(1)[0])
        text.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait_for(browser, f"return document.querySelector('#panel-{TEXT} .text-result')")
        result = text.find_element(By.CSS_SELECTOR, ".text-result")
        answer = client.post(f"/models/{TEXT}/predict", json={"texts": tickets(1)}).json()[0]
        assert result.get_attribute("data-label") == answer["label"] == "billing"
        meters = result.find_elements(By.CSS_SELECTOR, "[role=meter]")
        assert [m.get_attribute("aria-label") for m in meters] == [f"probability of {label}" for label in served(client)[TEXT]["labels"]]
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        browser.quit()


# ---------------------------------------------------------------- retrain with the recorded recipe, canary per model


def test_redeploy_retrains_a_model_with_its_recorded_recipe(
    client: httpx.Client, server: Server, served_root: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    recipe = Registry(served_root).get(TABLE, 1).read_metadata()["training"]["recipe"]
    assert recipe["command"] == "tabular" and recipe["kind"] == "tabular"
    assert recipe["options"]["target"] == "yield_t_ha" and recipe["options"]["epochs"] == 30
    new_data = write_crops_csv(tmp_path / "more_crops.csv", n=240, seed=9)
    common = ["--registry", str(served_root), "--url", server.url, "--token", TOKEN]
    assert redeploy_main([TABLE, "--data", str(new_data), "--tolerance", "0.5", *common]) == 0
    assert client.get(f"/models/{TABLE}").json()["version"] == 2
    metadata = Registry(served_root).get(TABLE, 2).read_metadata()
    assert metadata["training"]["recipe"]["options"] == recipe["options"], "the same recipe"
    assert metadata["data"]["fingerprint"] != recipe["data"]["fingerprint"], "on the new data"
    row = crop_rows(1)[0][0]
    canary = client.post(
        "/admin/candidate",
        json={"model": TABLE, "version": 1, "mode": "canary", "percent": 100},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert canary.status_code == 200, canary.text
    assert client.post(f"/models/{TABLE}/predict", json={"rows": [row]}).json()[0]["version"] == 1, "a canary per model"
    assert (
        client.post("/admin/candidate", json={"model": TABLE, "clear": True}, headers={"Authorization": f"Bearer {TOKEN}"}).status_code
        == 200
    )
    assert client.post(f"/models/{TABLE}/predict", json={"rows": [row]}).json()[0]["version"] == 2


def test_a_removed_model_is_gone_and_the_others_keep_serving(client: httpx.Client, served_root: Path) -> None:
    shutil.rmtree(served_root / IMAGE)
    wait_until(client, lambda models: IMAGE not in models)
    png = colour_pngs(1)[0]
    for response in (
        client.post(f"/models/{IMAGE}/predict", files=[("images", ("a.png", png))]),
        client.post(
            f"/v2/models/{IMAGE}/infer",
            json={"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(png).decode()]}]},
        ),
        client.get(f"/models/{IMAGE}"),
        client.get(f"/v2/models/{IMAGE}"),
    ):
        assert response.status_code == 404 and IMAGE in response.json()["error"], response.text
    assert client.post(f"/models/{TEXT}/predict", json={"texts": tickets(1)}).status_code == 200
    assert (
        client.post("/predict_price", json={"rows": [[0.06, 0, 2.46, 0, 0.488, 7.8, 53.6, 3.2, 3, 193, 17.8, 392.6, 3.0]]}).status_code
        == 200
    )


# ---------------------------------------------------------------- bad training data: one line, exit 2, nothing trained


def test_bad_training_data_is_one_error_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one_class = write_class_folders(tmp_path / "one", per_class=3)
    for extra in ("green", "red"):
        shutil.rmtree(one_class / extra)
    empty_class = write_class_folders(tmp_path / "empty", per_class=3)
    for file in (empty_class / "red").iterdir():
        file.unlink()
    one_label = tmp_path / "one_label.csv"
    one_label.write_text("message,team\n" + "".join(f"ticket number {i},billing\n" for i in range(20)))
    crops = write_crops_csv(tmp_path / "crops.csv", n=40)
    tickets_csv = write_tickets_csv(tmp_path / "tickets.csv", n=40)
    reviews = write_reviews_csv(tmp_path / "reviews.csv", n=40)
    cases = [
        (["image", "--name", "x", "--data", str(one_class)], "need at least two class subfolders"),
        (["image", "--name", "x", "--data", str(empty_class)], "['red'] have no images"),
        (
            ["text", "--name", "x", "--data", str(one_label), "--text-column", "message", "--label-column", "team"],
            "has one value ('billing')",
        ),
        (
            ["text", "--name", "x", "--data", str(tickets_csv), "--text-column", "body", "--label-column", "team"],
            "no column 'body' (--text-column)",
        ),
        (["tabular", "--name", "x", "--data", str(crops), "--target", "soil"], "the target 'soil' must be numeric"),
        (["tabular", "--name", "x", "--data", str(crops), "--target", "price"], "no column 'price' (--target)"),
        (
            ["tabular", "--name", "x", "--data", str(crops), "--target", "yield_t_ha", "--features", "rain", "soil"],
            "no column 'rain' (--features)",
        ),
        (["tabular", "--name", "x", "--data", str(reviews), "--target", "sentiment"], "must be numeric"),
        (
            ["text", "--name", "Support Tickets", "--data", str(tickets_csv), "--text-column", "message", "--label-column", "team"],
            "a model name is",
        ),
        (["tabular", "--name", "list", "--data", str(crops), "--target", "yield_t_ha"], "is a command of this tool"),
    ]
    for args, words in cases:
        assert train_main([*args, "--registry", str(tmp_path / "registry")]) == 2, args
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and words in errors[0] and "Traceback" not in err, (args, err)
    assert not (tmp_path / "registry").exists() or Registry(tmp_path / "registry").model_names() == [], "nothing trained, nothing written"

"""Drift on a real server: in-distribution traffic stays below the threshold, shifted traffic crosses it on the right feature.

The shipped models serve here with reference profiles made from generated data by
training/profile.py (the same code `python -m training profile` runs): 1,000 training
rows and 400 held-out rows, 1,000 and 400 reviews, 400 photos and 150 held-out ones. Two
workers, each with its own window, so every score is of both windows merged. Then a real
Prometheus (Debian's package), started on loopback by the test, scrapes this server and
evaluates deploy/monitoring/alerts.yml; its API must report the drift alert firing.

Stated numbers (each feature's score is checked after every chunk of shifted items):
- rows: after 400 rows drawn like the profile's, one feature (RM) times 3 crosses 0.2 within 200 rows;
- texts: after 400 reviews, texts from another domain (clinical notes) cross on oov_share within 120 texts;
- photos: after 300 photos, photos at a quarter of their brightness cross on brightness within 100,
  then photos rotated by 90 degrees (portrait instead of landscape) cross on width and height within 160.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from benchmarks.launch import ROOT, Server, free_port, start_server
from service.core.drift import PROFILE_FILE
from service.core.preprocessing import ImageSpec, decode_image
from service.core.registry import METADATA_FILE, Registry
from tests.conftest import SHIPPED_MODELS
from tests.generate import NEGATIVE_WORDS, NEUTRAL_WORDS, POSITIVE_WORDS, housing_rows
from tests.test_monitoring import MONITORING, dashboard_series
from training.drift import main as drift_report
from training.profile import add_profile

pytestmark = pytest.mark.integration

THRESHOLD = 0.2
TOKEN = "drift-test-token"
RM = 5  # the column of RM, rooms per dwelling
CLINICAL = ["myocardial", "infarction", "thrombocytopenia", "angiotensin", "subcutaneous", "hepatotoxicity", "nephropathy",
            "immunoglobulin", "glomerular", "echocardiography", "hyperlipidemia", "pharmacokinetic", "bioavailability",
            "contraindicated", "creatinine", "troponin", "mg", "dl", "bid", "po"]  # fmt: skip
DEADLINE_S = 90
ENDPOINTS = {"boston_housing": "/predict_price", "imdb_sentiment": "/sentiment", "image_classifier": "/classify_image"}
SERVE_ENV = {
    "MODELSERVE_WORKERS": "2",
    "MODELSERVE_DRIFT_INTERVAL_S": "1",
    "MODELSERVE_DRIFT_WINDOW": "2000",  # per worker: nothing sent here is pushed out of a window
    "MODELSERVE_DRIFT_MIN_ITEMS": "200",
    "MODELSERVE_PREDICTION_LOG_FILE_S": "1",
    "MODELSERVE_PREDICTION_LOG_INPUTS": "1",
    "MODELSERVE_ADMIN_TOKEN": TOKEN,
}


# ---------------------------------------------------------------- generated data


def reviews(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    texts = []
    for i in range(n):
        words = list(rng.choice(NEUTRAL_WORDS, size=int(rng.integers(16, 50)))) + list(
            rng.choice(POSITIVE_WORDS if i % 2 else NEGATIVE_WORDS, 4)
        )
        rng.shuffle(words)
        texts.append(" ".join(words).capitalize() + ".")
    return texts


def clinical_notes(n: int, seed: int) -> list[str]:
    """Another domain, as long as the reviews: mostly words the review vocabulary has never seen."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice([*CLINICAL, "the", "and", "of"], size=int(rng.integers(20, 54)))).capitalize() + "." for _ in range(n)]


def photo(rng: np.random.Generator) -> Image.Image:
    """A landscape picture of a few noisy colour blocks at a random brightness."""
    width, height = int(rng.integers(80, 121)), int(rng.integers(56, 76))
    base = rng.integers(40, 216, size=(3, 3, 3)).astype(float)
    blocks = np.kron(base, np.ones((height // 3 + 1, width // 3 + 1, 1)))[:height, :width]
    pixels = np.clip(blocks * rng.uniform(0.8, 1.2) + rng.normal(0, 20, blocks.shape), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def photos(n: int, seed: int, change: Callable[[Image.Image], Image.Image] = lambda image: image) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buffer = io.BytesIO()
        change(photo(rng)).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def darkened(image: Image.Image) -> Image.Image:
    return Image.fromarray((np.asarray(image) // 4).astype(np.uint8), "RGB")


def rotated(image: Image.Image) -> Image.Image:
    return image.transpose(Image.Transpose.ROTATE_90)


# ---------------------------------------------------------------- the registry and the server


def copy_current(root: Path, name: str) -> int:
    registry = Registry(SHIPPED_MODELS)
    version = registry.current_version(name)
    shutil.copytree(SHIPPED_MODELS / name / str(version), root / name / str(version))
    Registry(root).promote(name, version)
    return version


def without_profile(root: Path, name: str, source: int) -> int:
    """A copy of `source` as the next version, profile removed: a version published before profiles existed."""
    target = max(Registry(root).versions(name)) + 1
    shutil.copytree(root / name / str(source), root / name / str(target))
    (root / name / str(target) / PROFILE_FILE).unlink(missing_ok=True)
    metadata = json.loads((root / name / str(target) / METADATA_FILE).read_text())
    metadata.pop("profile", None)
    (root / name / str(target) / METADATA_FILE).write_text(json.dumps(metadata | {"version": target}))
    return target


def profiled(root: Path, name: str, inputs: list[Any], held_out: list[Any]) -> int:
    registry = Registry(root)
    data = {"files": [{"path": "generated by tests/test_drift.py"}], "split": "generated", "fingerprint": "generated"}
    version = add_profile(registry, registry.current(name), inputs, held_out, data)
    registry.promote(name, version.version)
    return version.version


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("registry")
    for name in ("boston_housing", "imdb_sentiment", "image_classifier"):
        copy_current(root, name)
    without_profile(root, "boston_housing", Registry(root).current_version("boston_housing"))
    profiled(root, "boston_housing", [row.tolist() for row in housing_rows(1000, seed=1)[0]], list(housing_rows(400, seed=2)[0]))
    profiled(root, "imdb_sentiment", reviews(1000, seed=1), reviews(400, seed=2))
    folder = root.parent / "photos"
    folder.mkdir()
    for i, data in enumerate(photos(400, seed=1)):
        (folder / f"{i}.png").write_bytes(data)
    spec = ImageSpec.from_json(Registry(root).current("image_classifier").read_metadata()["preprocessing"])
    held_out = [decode_image(data, spec) for data in photos(150, seed=2)]
    profiled(root, "image_classifier", sorted(folder.glob("*.png")), held_out)
    return root


@pytest.fixture(scope="module")
def log_dir(root: Path) -> Path:
    return root.parent / "predictions"


@pytest.fixture(scope="module")
def server(root: Path, log_dir: Path) -> Iterator[Server]:
    server = start_server(root, root.parent / "server.log", MODELSERVE_PREDICTION_LOG_DIR=str(log_dir), **SERVE_ENV)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


# ---------------------------------------------------------------- helpers


SENT: dict[str, int] = {}  # items sent to each model's current version so far


def items_in(request: dict[str, Any]) -> int:
    return len(request["files"]) if "files" in request else len(next(iter(request["json"].values())))


def send(client: httpx.Client, name: str, requests: list[dict[str, Any]]) -> int:
    """Requests over up to 4 connections (the kernel spreads connections over the two workers); returns the items sent."""
    path = ENDPOINTS[name]
    with ThreadPoolExecutor(4) as pool:
        for response in pool.map(lambda kwargs: client.post(path, **kwargs), requests):
            assert response.status_code == 200, response.text
    sent = sum(items_in(r) for r in requests)
    SENT[name] = SENT.get(name, 0) + sent
    return sent


def current_drift(client: httpx.Client, name: str) -> dict[str, Any]:
    """The current version's drift once both workers' windows hold every item sent to it (the windows are never full here)."""
    items, deadline, entry = SENT.get(name, 0), time.monotonic() + DEADLINE_S, {}
    while time.monotonic() < deadline:
        report = client.get(f"/models/{name}/drift").json()
        entry = next((v for v in report.get("versions", []) if v["role"] == "current"), {})
        if entry.get("window", {}).get("items", 0) >= items:
            assert entry["window"]["items"] == items, entry["window"]
            return entry
        time.sleep(0.3)
    raise AssertionError(f"{name}: the windows did not reach {items} items in {DEADLINE_S} s: {entry}")


def inputs_drifted(entry: dict[str, Any]) -> set[str]:
    return {f["name"] for f in entry["features"] if f["role"] == "input" and f["drifted"]}


def shifted_until(client: httpx.Client, name: str, chunks: list[list[dict[str, Any]]], wanted: set[str]) -> tuple[int, dict]:
    """Send chunks of shifted requests until `wanted` features have all drifted; (shifted items sent, drift) at that point."""
    sent, entry = 0, {}
    for chunk in chunks:
        sent += send(client, name, chunk)
        entry = current_drift(client, name)
        if wanted <= inputs_drifted(entry):
            return sent, entry
    raise AssertionError(f"{wanted} did not cross {THRESHOLD} after {sent} shifted items: {worst(entry)}")


def worst(entry: dict[str, Any]) -> list[tuple[str, float | None]]:
    return [(f["name"], f["score"]) for f in entry.get("features", [])]


def rows_requests(x: np.ndarray, per: int = 4) -> list[dict[str, Any]]:
    return [{"json": {"rows": x[i : i + per].tolist()}} for i in range(0, len(x), per)]


def text_requests(texts: list[str], per: int = 4) -> list[dict[str, Any]]:
    return [{"json": {"texts": texts[i : i + per]}} for i in range(0, len(texts), per)]


def image_requests(images: list[bytes], per: int = 2) -> list[dict[str, Any]]:
    return [
        {"files": [("images", (f"{j}.png", data, "image/png")) for j, data in enumerate(images[i : i + per])]}
        for i in range(0, len(images), per)
    ]


def chunked(requests: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [requests[i : i + size] for i in range(0, len(requests), size)]


# ---------------------------------------------------------------- the tests


def test_rows_in_distribution_stay_below_and_one_feature_times_three_crosses_on_it(client: httpx.Client) -> None:
    x, _ = housing_rows(400, seed=11)
    send(client, "boston_housing", rows_requests(x))
    entry = current_drift(client, "boston_housing")
    assert entry["status"] == "ok" and entry["window"]["workers"] == 2, worst(entry)
    assert all(f["score"] < THRESHOLD for f in entry["features"]), worst(entry)

    shifted, _ = housing_rows(200, seed=12)
    shifted[:, RM] *= 3
    sent, entry = shifted_until(client, "boston_housing", chunked(rows_requests(shifted), 10), {"RM"})
    assert sent <= 200 and inputs_drifted(entry) == {"RM"}, worst(entry)
    assert entry["status"] == "drifted" and "RM" in entry["drifted_features"]


def test_texts_from_another_domain_cross_on_the_share_of_unknown_words(client: httpx.Client) -> None:
    send(client, "imdb_sentiment", text_requests(reviews(400, seed=11)))
    entry = current_drift(client, "imdb_sentiment")
    assert entry["status"] == "ok", worst(entry)
    sent, entry = shifted_until(client, "imdb_sentiment", chunked(text_requests(clinical_notes(120, seed=3)), 5), {"oov_share"})
    assert sent <= 120 and inputs_drifted(entry) == {"oov_share"}, worst(entry)


def test_darkened_then_rotated_photos_cross_on_brightness_then_on_width_and_height(client: httpx.Client) -> None:
    send(client, "image_classifier", image_requests(photos(300, seed=11)))
    entry = current_drift(client, "image_classifier")
    assert entry["status"] == "ok", worst(entry)

    dark = chunked(image_requests(photos(100, seed=12, change=darkened)), 10)
    sent_dark, entry = shifted_until(client, "image_classifier", dark, {"brightness"})
    assert sent_dark <= 100 and not {"width", "height"} & inputs_drifted(entry), worst(entry)

    turned = chunked(image_requests(photos(160, seed=13, change=rotated)), 10)
    sent_turned, entry = shifted_until(client, "image_classifier", turned, {"width", "height"})
    assert sent_turned <= 160, worst(entry)


def test_a_real_prometheus_fires_the_drift_alert(server: Server, client: httpx.Client, tmp_path: Path) -> None:
    """Prometheus scrapes this server every second and evaluates alerts.yml with each rule's `for` cut to 2 s (the expressions
    are the shipped ones); after the shifted rows above its API lists ModelInputDrift firing for RM."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (Debian: apt-get install prometheus; .ci/run does)")
    assert "RM" in current_drift(client, "boston_housing")["drifted_features"], "the rows test left RM drifted"
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    for rule in rules["groups"][0]["rules"]:
        rule["for"] = "2s"
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    target = server.url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "alerts.yml")],
        "scrape_configs": [{"job_name": "modelserve", "static_configs": [{"targets": [target]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    command = [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
               f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]  # fmt: skip
    with open(tmp_path / "prometheus.log", "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        firing = wait_for_alert(f"http://127.0.0.1:{port}", process, tmp_path / "prometheus.log")
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(30)
    assert {"model": "boston_housing", "feature": "RM", "severity": "warning"}.items() <= firing["labels"].items()
    assert float(firing["value"]) > THRESHOLD


def wait_for_alert(url: str, process: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    deadline, alerts = time.monotonic() + DEADLINE_S, []
    while time.monotonic() < deadline:
        assert process.poll() is None, f"prometheus exited: {log.read_text()[-2000:]}"
        try:
            alerts = httpx.get(f"{url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
        except httpx.HTTPError:
            alerts = []
        for alert in alerts:
            if (
                alert["labels"].get("alertname") == "ModelInputDrift"
                and alert["labels"].get("feature") == "RM"
                and alert["state"] == "firing"
            ):
                return alert
        time.sleep(0.5)
    raise AssertionError(f"no firing ModelInputDrift for RM within {DEADLINE_S} s; alerts: {alerts}; log: {log.read_text()[-2000:]}")


def test_a_version_without_a_profile_serves_and_says_why_drift_is_unavailable(root: Path, client: httpx.Client) -> None:
    """The copy without profile.json runs as a shadow candidate: it scores every request, its drift is unavailable with the reason."""
    old = next(v for v in Registry(root).versions("boston_housing") if not (root / "boston_housing" / str(v) / PROFILE_FILE).exists())
    body = {"model": "boston_housing", "version": old, "mode": "shadow"}
    assert client.post("/admin/candidate", json=body, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    send(client, "boston_housing", rows_requests(housing_rows(40, seed=21)[0]))
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        versions = {v["role"]: v for v in client.get("/models/boston_housing/drift").json()["versions"]}
        if "candidate" in versions:
            break
        time.sleep(0.3)
    candidate = versions["candidate"]
    assert candidate["version"] == old and candidate["available"] is False
    assert PROFILE_FILE in candidate["reason"] and "python -m training profile" in candidate["reason"]
    assert versions["current"]["available"] is True
    metrics = client.get("/metrics").text
    assert f'modelserve_drift_profile_available{{model="boston_housing",version="{old}"}} 0.0' in metrics


def test_every_series_the_dashboard_queries_is_exported(client: httpx.Client) -> None:
    """After the traffic above (with a shadow candidate), every series a dashboard query names is on /metrics."""
    exported = {line.split("{")[0].split(" ")[0] for line in client.get("/metrics").text.splitlines() if line and not line.startswith("#")}
    missing = sorted(dashboard_series() - exported)
    assert not missing, f"the dashboard queries series this server does not export: {missing}"


def test_the_prediction_log_holds_every_sampled_item_and_batch_scoring_reads_it(
    root: Path, log_dir: Path, client: httpx.Client, tmp_path: Path
) -> None:
    current = Registry(root).current_version("boston_housing")
    items = current_drift(client, "boston_housing")["window"]["items"]
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        rows = pd.read_parquet(log_dir / "boston_housing") if list((log_dir / "boston_housing").glob("*.parquet")) else pd.DataFrame()
        if len(rows) and (rows["version"] == current).sum() >= items:
            break
        time.sleep(0.5)
    rows = rows[rows["version"] == current]
    assert len(rows) == items and rows["request"].nunique() == items // 4
    assert {"time", "latency_ms", "RM", "predicted_value", "answer"} <= set(rows.columns)
    assert (rows["latency_ms"] > 0).all() and rows["predicted_value"].tolist() == [json.loads(a)["price"] for a in rows["answer"]]

    one = sorted((log_dir / "boston_housing").glob("*.parquet"))[0]
    output = tmp_path / "rescored.parquet"
    env = os.environ | {"MODELSERVE_MODEL_ROOT": str(root), "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "service.batch", "boston_housing", str(one), "-o", str(output)], env=env, check=True, cwd=ROOT)
    logged, rescored = pd.read_parquet(one), pd.read_parquet(output)
    assert (rescored["version"] == current).all() and len(rescored) == len(logged)
    assert np.allclose(rescored["price"], logged["predicted_value"], atol=1e-5), "batch scoring reads a log file as a table"

    texts = pd.read_parquet(log_dir / "imdb_sentiment")
    assert texts["text"].str.len().gt(0).all() and {"length", "oov_share", "predicted_label", "predicted_score"} <= set(texts.columns)
    images = pd.read_parquet(log_dir / "image_classifier")
    assert {"width", "height", "brightness", "saturation"} <= set(images.columns) and not {"text", "image"} & set(images.columns)


def test_the_drift_report_prints_and_draws_the_same_scores_from_the_service_and_the_log(
    server: Server, root: Path, log_dir: Path, client: httpx.Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    current_drift(client, "boston_housing")  # the service's window holds what the log holds (the test above waited for the log)
    assert drift_report(["boston_housing", "--url", server.url, "--output", str(tmp_path / "live.png")]) == 0
    live = capsys.readouterr().out
    assert drift_report(["boston_housing", "--log", str(log_dir), "--registry", str(root), "--output", str(tmp_path / "log.png")]) == 0
    logged = capsys.readouterr().out
    for out in (live, logged):
        lines = out.splitlines()
        assert lines[3].split()[0] in ("RM", "predicted_value"), out  # worst first
        assert any(line.startswith("RM ") and line.rstrip().endswith("YES") for line in lines), out
    assert (tmp_path / "live.png").stat().st_size > 20_000 and (tmp_path / "log.png").stat().st_size > 20_000
    score = {out: next(line.split()[2] for line in out.splitlines() if line.startswith("RM ")) for out in (live, logged)}
    assert score[live] == score[logged], "the same items binned by the same code"


def test_a_graceful_stop_writes_the_rows_the_log_still_held(root: Path, tmp_path: Path) -> None:
    """With files written only every hour, nothing is on disk while serving; SIGTERM writes the buffered rows."""
    log = tmp_path / "predictions"
    server = start_server(
        root,
        tmp_path / "server.log",
        MODELSERVE_MODELS="boston_housing",
        MODELSERVE_PREDICTION_LOG_DIR=str(log),
        MODELSERVE_PREDICTION_LOG_FILE_S="3600",
    )
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for request in rows_requests(housing_rows(40, seed=31)[0]):
                assert client.post("/predict_price", **request).status_code == 200
        time.sleep(1)
        assert not list(log.rglob("*.parquet"))
    finally:
        assert server.stop() == 0
    assert len(pd.read_parquet(log / "boston_housing")) == 40

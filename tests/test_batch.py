"""The offline batch scorer: answers equal the HTTP service's, failures are listed, a killed job resumes exactly."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from benchmarks.launch import ROOT
from service.batch import cli, run
from service.core import errors as codes
from service.core.registry import Registry
from service.core.runtime import load_model
from tests.generate import class_image, housing_rows, image_bytes, review
from training.datasets import BOSTON_FEATURES

pytestmark = pytest.mark.integration

MODEL_ROOT = ROOT / "models"
FIXTURES = Path(__file__).parent / "fixtures"
TOLERANCE = 1e-6
HTTP_ITEMS = 16  # items per HTTP request, under the service's max_items
IN_PROCESS = ["--model-root", str(MODEL_ROOT), "--executor", "thread", "--workers", "2"]


def score(*args: str) -> tuple[int, str]:
    """Run the CLI in this process (threads: no worker start-up); return exit status and stderr."""
    stream = io.StringIO()
    status = cli.main([*args, *IN_PROCESS], stream=stream)
    return status, stream.getvalue()


def read_table(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def chunks(items: list[Any], size: int = HTTP_ITEMS) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ---------------------------------------------------------------- images


def write_image_tree(root: Path) -> tuple[list[str], dict[str, str]]:
    """Valid images in nested folders, and corrupt ones with image suffixes; return (valid, corrupt: why)."""
    rng = np.random.default_rng(7)
    cat = (FIXTURES / "cat.jpg").read_bytes()
    files: dict[str, bytes] = {
        "cats/cat.jpg": cat,
        "dogs/dog.jpg": (FIXTURES / "dog.jpg").read_bytes(),
        "dogs/more/dog_gray.png": image_bytes(Image.open(FIXTURES / "dog.jpg").convert("L"), "PNG"),
        "cats/cat_rgba.png": image_bytes(Image.open(FIXTURES / "cat.jpg").convert("RGBA"), "PNG"),
        "Z_upper.JPG": image_bytes(class_image(rng, (200, 50, 40), 64), "JPEG"),
        "misc/blue.webp": image_bytes(class_image(rng, (40, 60, 200), 80), "WEBP"),
        "misc/red.bmp": image_bytes(class_image(rng, (200, 50, 40), 40), "BMP"),
    }
    corrupt = {
        "cats/truncated.jpg": (cat[: len(cat) // 2], "is truncated or corrupt"),
        "dogs/empty.png": (b"", "is empty"),
        "misc/more/not_an_image.jpg": (b"just text in a file called .jpg\n", "is not a supported image"),
    }
    for relative, data in [*files.items(), *((k, v[0]) for k, v in corrupt.items())]:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    (root / "misc" / "notes.txt").write_text("not an input: no image suffix\n")
    return sorted(files), {k: v[1] for k, v in corrupt.items()}


def test_image_folder_matches_the_service(tmp_path: Path, client: httpx.Client) -> None:
    valid, corrupt = write_image_tree(tmp_path / "images")
    out = tmp_path / "scores.jsonl"
    status, log = score("image_classifier", str(tmp_path / "images"), "-o", str(out), "--batch-size", "3")
    assert status == codes.EXIT_ROWS_FAILED, log
    assert "skipping 1 file(s) without an input suffix: misc/notes.txt" in log and "3 failed" in log
    ran = client.get("/models").json()["models"]
    file = next(m["model_file"] for m in ran if m["name"] == "image_classifier")
    assert f"({file['file']})" in log and f"model file: {file['file']} ({file['precision']}" in log, (
        "batch scores with the file the service runs here"
    )

    rows = read_table(out)
    walked = [r["path"] for r in rows]
    assert walked == sorted(walked, key=lambda p: p.split("/")), "sorted by path components"
    assert sorted(walked) == valid
    for row in rows:
        response = client.post("/classify_image", files=[("images", (row["path"], (tmp_path / "images" / row["path"]).read_bytes()))])
        assert response.status_code == 200, response.text
        answer = response.json()[0]
        assert row["label"] == answer["label"], row["path"]
        assert row["score"] == pytest.approx(answer["score"], abs=TOLERANCE)
        assert row["probabilities"] == pytest.approx(answer["probabilities"], abs=TOLERANCE)
        assert (row["model"], row["version"]) == (answer["model"], answer["version"])

    errors = {e["path"]: e["reason"] for e in read_table(tmp_path / "scores.errors.jsonl")}
    assert set(errors) == set(corrupt)
    for relative, why in corrupt.items():
        response = client.post("/classify_image", files=[("images", (relative, (tmp_path / "images" / relative).read_bytes()))])
        assert response.status_code == 400, "the service refuses exactly the inputs the batch lists as errors"
        assert why in errors[relative] and why in response.json()["error"]


# ---------------------------------------------------------------- texts


def write_reviews(path: Path, n: int, empty_every: int, seed: int = 0) -> dict[int, str]:
    """A CSV of id, review, sentiment with some empty and blank reviews; return {row: expected reason}."""
    rng = np.random.default_rng(seed)
    bad = {}
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "Review", "sentiment"])
        for i in range(n):
            text = review(rng, positive=bool(i % 2))
            if i % empty_every == empty_every - 1:
                text, bad[i] = ("" if i % 2 else "   \n "), "text: is empty"
            writer.writerow([f"r{i}", text, "positive" if i % 2 else "negative"])
    return bad


def test_text_csv_matches_the_service(tmp_path: Path, client: httpx.Client) -> None:
    source = tmp_path / "reviews.csv"
    bad = write_reviews(source, 60, empty_every=20)
    with open(source, "a", newline="") as handle:  # one review over the service's default limit of 50,000 characters
        csv.writer(handle).writerow(["r60", "great " * 10_000, "positive"])
    bad[60] = "more than the limit of 50,000"
    out = tmp_path / "scores.csv"
    status, log = score("imdb_sentiment", str(source), "-o", str(out), "--keep-columns", "--chunk-size", "16")
    assert status == codes.EXIT_ROWS_FAILED, log

    rows = read_table(out)
    texts = {int(r["row"]): r["input_Review"] for r in rows}
    assert [int(r["row"]) for r in rows] == [i for i in range(61) if i not in bad]
    assert all(r["input_id"] == f"r{r['row']}" for r in rows), "kept columns stay with their row"
    keys = list(texts)
    answers = [a for part in chunks(keys) for a in client.post("/sentiment", json={"texts": [texts[k] for k in part]}).json()]
    for row, answer in zip(rows, answers, strict=True):
        assert row["label"] == answer["label"]
        assert float(row["probability_positive"]) == pytest.approx(answer["probability_positive"], abs=TOLERANCE)
        assert (row["model"], int(row["version"])) == (answer["model"], answer["version"])

    errors = read_table(tmp_path / "scores.errors.csv")
    assert [int(e["row"]) for e in errors] == sorted(bad)
    for error in errors:
        assert bad[int(error["row"])] in error["reason"]


# ---------------------------------------------------------------- features


def test_feature_parquet_matches_the_service(tmp_path: Path, client: httpx.Client) -> None:
    x, _ = housing_rows(40, seed=3)
    columns: dict[str, list[float | None]] = {
        name.lower() if i % 2 else name: list(map(float, x[:, i])) for i, name in enumerate(BOSTON_FEATURES)
    }
    columns["NOX"][5] = math.nan
    columns["rm"][9] = None
    columns["id"] = [f"house-{i}" for i in range(40)]  # not a feature: ignored
    source = tmp_path / "houses.parquet"
    pq.write_table(pa.table(columns), source)
    out = tmp_path / "prices.parquet"
    status, log = score("boston_housing", str(source), "-o", str(out))
    assert status == codes.EXIT_ROWS_FAILED and "2 failed" in log, log

    rows = read_table(out)
    assert [r["row"] for r in rows] == [i for i in range(40) if i not in (5, 9)]
    features = [{name: x[r["row"], i] for i, name in enumerate(BOSTON_FEATURES)} for r in rows]
    answers = [a for part in chunks(features) for a in client.post("/predict_price", json={"rows": part}).json()]
    for row, answer in zip(rows, answers, strict=True):
        assert row["price"] == pytest.approx(answer["price"], abs=TOLERANCE)
        assert (row["unit"], row["model"], row["version"]) == (answer["unit"], answer["model"], answer["version"])

    errors = {e["row"]: e["reason"] for e in read_table(tmp_path / "prices.errors.jsonl")}
    assert set(errors) == {5, 9}
    assert "feature NOX is nan" in errors[5] and "missing features ['RM']" in errors[9]


def test_all_rows_scored_exits_0_with_progress_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, _ = housing_rows(30, seed=1)
    source = tmp_path / "houses.jsonl"
    source.write_text("".join(json.dumps(dict(zip(BOSTON_FEATURES, map(float, row)))) + "\n" for row in x))
    monkeypatch.setattr(run, "PROGRESS_EVERY_S", 0.0)
    out = tmp_path / "prices.jsonl"
    status, log = score("boston_housing", str(source), "-o", str(out), "--chunk-size", "10")
    assert status == codes.EXIT_OK, log
    assert "boston_housing v" in log and "30/30 rows (100.0%)" in log and "rows/s" in log
    model = load_model(Registry(MODEL_ROOT).current("boston_housing"), ["CPUExecutionProvider"])
    expected = model.predict(list(x))
    assert [r["price"] for r in read_table(out)] == pytest.approx([e["price"] for e in expected], abs=TOLERANCE)
    assert not (tmp_path / "prices.errors.jsonl").exists(), "no errors file when no row failed (issue 23, 6: it was empty)"
    assert not (tmp_path / ".prices.jsonl.batch").exists(), "the work folder is removed after success"


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    source = tmp_path / "reviews.csv"
    write_reviews(source, 5, empty_every=100)
    out = str(tmp_path / "out.csv")
    assert score("no_such_model", str(source), "-o", out)[0] == codes.EXIT_USAGE
    assert score("imdb_sentiment", str(tmp_path / "missing.csv"), "-o", out)[0] == codes.EXIT_USAGE
    assert score("imdb_sentiment", str(source), "-o", out, "--version", "999")[0] == codes.EXIT_USAGE
    status, log = score("imdb_sentiment", str(source), "-o", out, "--text-column", "summary")
    assert status == codes.EXIT_USAGE and "no column 'summary'" in log
    status, log = score("boston_housing", str(source), "-o", out)
    assert status == codes.EXIT_USAGE and "no column for features" in log
    assert score("imdb_sentiment", str(source), "-o", out)[0] == codes.EXIT_OK
    status, log = score("imdb_sentiment", str(source), "-o", out)
    assert status == codes.EXIT_USAGE and "--overwrite" in log
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "a refused run leaves no work folder behind"
    assert score("imdb_sentiment", str(source), "-o", out, "--overwrite")[0] == codes.EXIT_OK


def test_an_output_that_is_a_folder_is_refused_before_any_work(tmp_path: Path) -> None:
    """Issue 23, 15: with --overwrite it scored every row, then failed at the end (IsADirectoryError), again on every rerun."""
    source = tmp_path / "reviews.csv"
    write_reviews(source, 5, empty_every=100)
    (tmp_path / "out.csv").mkdir()
    (tmp_path / "errors").mkdir()
    for output, extra in (("out.csv", []), ("other.csv", ["--errors", str(tmp_path / "errors")])):  # OUTPUT, then the errors file
        status, log = score("imdb_sentiment", str(source), "-o", str(tmp_path / output), "--overwrite", *extra)
        assert status == codes.EXIT_USAGE and "is not a file" in log and "rows/s" not in log, log
    assert sorted(p.name for p in tmp_path.iterdir()) == ["errors", "out.csv", "reviews.csv"], "nothing written, no work folder left"


# ---------------------------------------------------------------- resume


def start_job(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """The CLI as a user runs it, in its own process."""
    command = [sys.executable, "-m", "service.batch", *args, "--model-root", str(MODEL_ROOT)]
    return subprocess.Popen(command, cwd=ROOT, stderr=open(log, "wb"), env=os.environ | {"PYTHONPATH": str(ROOT)})


def wait_for_progress(job: subprocess.Popen[bytes], state: Path, position: int, log: Path) -> None:
    """Block until at least `position` inputs are committed, with the job still running."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert job.poll() is None, f"the job ended ({job.returncode}) before it could be stopped:\n{log.read_text()}"
        try:
            if json.loads(state.read_text())["position"] >= position:
                return
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.02)
    job.kill()
    raise AssertionError(f"no progress to {position} in 120 s:\n{log.read_text()}")


def test_killed_job_resumes_without_duplicates_or_gaps(tmp_path: Path) -> None:
    n = 3000
    source = tmp_path / "reviews.csv"
    bad = write_reviews(source, n, empty_every=250)
    out = tmp_path / "scores.parquet"
    args = ["imdb_sentiment", str(source), "-o", str(out), "--batch-size", "16", "--chunk-size", "32", "--executor", "process"]
    work = tmp_path / ".scores.parquet.batch"
    log = tmp_path / "job.log"

    job = start_job(args, log)
    wait_for_progress(job, work / "state.json", 160, log)
    workers = psutil.Process(job.pid).children()
    job.send_signal(signal.SIGKILL)
    job.wait()
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, "worker processes leave when their job is killed"
    state = json.loads((work / "state.json").read_text())
    assert 0 < state["position"] < n and not out.exists()
    # A part written after the last commit, as a kill between writing it and recording it leaves it.
    (work / f"part-{state['parts']:06d}.parquet").write_bytes(b"PAR1 torn, no footer")

    status, message = score(*args, "--keep-columns")
    assert status == codes.EXIT_USAGE and "keep_columns: False -> True" in message and "--restart" in message

    job = start_job(args, log)  # the same command again; this time stopped with Ctrl-C
    wait_for_progress(job, work / "state.json", state["position"] + 160, log)
    job.send_signal(signal.SIGINT)
    assert job.wait(60) == codes.EXIT_INTERRUPTED, log.read_text()
    assert "run the same command again to resume" in log.read_text()

    job = start_job(args, log)
    assert job.wait(120) == codes.EXIT_ROWS_FAILED, log.read_text()
    assert "resuming" in log.read_text()

    rows = read_table(out)
    errors = read_table(tmp_path / "scores.errors.jsonl")
    assert [r["row"] for r in rows] == [i for i in range(n) if i not in bad], "every valid row once, in order"
    assert [e["row"] for e in errors] == sorted(bad) and all(e["reason"] == "text: is empty" for e in errors)
    with open(source, newline="") as handle:
        texts = [r["Review"] for r in csv.DictReader(handle)]
    model = load_model(Registry(MODEL_ROOT).current("imdb_sentiment"), ["CPUExecutionProvider"])
    expected = model.predict([texts[r["row"]] for r in rows])
    assert [r["label"] for r in rows] == [e["label"] for e in expected]
    assert [r["probability_positive"] for r in rows] == pytest.approx([e["probability_positive"] for e in expected], abs=TOLERANCE)
    assert not work.exists()


def test_the_same_bad_row_gets_the_same_reason_over_http_and_in_batch(tmp_path: Path, client: httpx.Client) -> None:
    """One implementation of each rule: a row HTTP refuses is refused by batch scoring, for the same reason."""
    good = dict(zip(BOSTON_FEATURES, map(float, housing_rows(1, seed=2)[0][0]), strict=True))
    bad_rows = [
        good | {"CRIM": -1.0},  # log-scaled feature below zero (round 1: batch scored it, HTTP said 400)
        good | {"RM": "seven"},
        good | {"NOX": math.nan},
        {k: v for k, v in good.items() if k != "LSTAT"},
        good | {"TAX": int("9" * 400)},  # an integer too large for a float: HTTP 500, and it stopped the job (issue 23, 10)
    ]
    source = tmp_path / "houses.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in [good, *bad_rows]))  # json writes NaN as NaN, as pandas does
    status, log = score("boston_housing", str(source), "-o", str(tmp_path / "prices.jsonl"))
    assert status == codes.EXIT_ROWS_FAILED, log
    reasons = {e["row"]: e["reason"] for e in read_table(tmp_path / "prices.errors.jsonl")}
    assert sorted(reasons) == [1, 2, 3, 4, 5]
    for number, row in enumerate(bad_rows, 1):
        response = client.post("/predict_price", content=json.dumps({"rows": [row]}), headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text
        http_reason = response.json()["error"].removeprefix("rows[0]: ")
        assert reasons[number] == f"row: {http_reason}", (reasons[number], http_reason)
    assert "NaN" not in (tmp_path / "prices.jsonl").read_text(), "NaN is never written into JSON"

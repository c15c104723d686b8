"""The Spark engine (real Spark, local[2]): the same rows, answers and refusals as `python -m service.batch`.

One SparkSession for the module (starting a JVM costs ~15 s here); each test runs the
batch command line in this process with `--engine spark`, which uses that session, and
compares with the single-machine scorer on the same generated input. `spark-submit`
itself is run by tests/test_catalog.py, on a model trained there (one JVM fewer).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from benchmarks.launch import ROOT
from service.batch import cli
from service.core import errors as codes
from service.core.registry import Registry
from service.core.runtime import load_model
from tests.generate import class_image, housing_rows, image_bytes, review
from tests.sparkconf import TEST_CONF
from tests.test_int8 import disagreeing, photos, tiny_registry, with_variant
from training.datasets import BOSTON_FEATURES

pyspark = pytest.importorskip("pyspark", reason="pip install -e '.[spark]'")  # in the dev extra, so CI runs these
from service.batch import spark  # noqa: E402  (needs pyspark)

# pyspark 4.3 warns about pandas 3 on every session and mapInArrow; the engine never hands pandas anything.
pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas")]

MODEL_ROOT = ROOT / "models"
SERVED = {name: Registry(MODEL_ROOT).current_version(name) for name in ("imdb_sentiment", "boston_housing")}
FIXTURES = Path(__file__).parent / "fixtures"
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def session() -> Iterator[Any]:
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master("local[2]").appName("modelserve tests")
    for key, value in TEST_CONF.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    yield session
    session.stop()


def score(engine: str, *args: str) -> tuple[int, str]:
    """The batch command line in this process; the Spark engine uses the module's session."""
    stream = io.StringIO()
    extra = ["--engine", "spark"] if engine == "spark" else ["--executor", "thread", "--workers", "2"]
    status = cli.main([*args, "--model-root", str(MODEL_ROOT), *extra], stream=stream)
    return status, stream.getvalue()


def read(path: Path) -> list[dict[str, Any]]:
    """A Spark dataset folder or a single-machine file, as rows."""
    if path.is_dir():
        assert (path / "_SUCCESS").exists(), "committed"
        parts = sorted(path.glob("part-*"))
        if path.suffix == ".jsonl":
            return [json.loads(line) for part in parts for line in part.read_text().splitlines()]
        if path.suffix == ".csv":
            return [row for part in parts for row in csv.DictReader(io.StringIO(part.read_text(), newline=""))]
        return ds.dataset(path, format="parquet").to_table().to_pylist()
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text().splitlines()]


def by_key(rows: list[dict[str, Any]], *keys: str) -> dict[Any, dict[str, Any]]:
    out = {tuple(r[k] for k in keys) if len(keys) > 1 else r[keys[0]]: r for r in rows}
    assert len(out) == len(rows), "every key once"
    return out


def assert_same_answers(spark_rows: dict[Any, dict[str, Any]], local_rows: dict[Any, dict[str, Any]]) -> None:
    assert spark_rows.keys() == local_rows.keys(), "the same inputs scored"
    for key, expected in local_rows.items():
        got = spark_rows[key]
        assert got.keys() == expected.keys(), key
        for name, value in expected.items():
            if isinstance(value, (float, dict)):
                assert got[name] == pytest.approx(value, abs=TOLERANCE), (key, name)
            else:
                assert got[name] == value, (key, name)


# ---------------------------------------------------------------- texts


def write_reviews_jsonl(path: Path, n: int) -> dict[int, str]:
    """Reviews with empty, blank, non-string, missing and unparsable ones among them; return {row: expected reason}."""
    rng = np.random.default_rng(5)
    odd: dict[int, tuple[str, str]] = {
        3: ('{"review": ""}', "text: is empty"),
        4: ('{"review": "   \\n\\t "}', "text: is empty"),
        5: ('{"review": 42}', "text: must be a string, got int"),
        6: ('{"review": null}', "text: is missing"),
        7: ('{"review": ["a", "list"]}', "text: must be a string, got list"),
        8: ('{"id": "no review key"}', "text: is missing"),
        9: ('{"review": true}', "text: must be a string, got bool"),
        10: ("{not json", "line is not valid JSON"),
        11: ('["an", "array"]', "line is a JSON list, not an object"),
    }
    bad = {}
    with open(path, "w") as handle:
        for i in range(n):
            line, why = odd.get(i % 1000, (None, None)) if i >= 1000 or i in odd else (None, None)
            if line is None:
                line = json.dumps({"id": f"r{i}", "review": review(rng, positive=bool(i % 2))})
            else:
                bad[i] = why
            handle.write(line + "\n")
            if i == 500:
                handle.write("   \n")  # a blank line is no row, in either engine
    return bad


def test_3000_reviews_give_the_single_machine_answers_and_reasons(tmp_path: Path, session: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "reviews.jsonl"
    bad = write_reviews_jsonl(source, 3_000)  # several partitions; every kind of bad line three times
    assert len(bad) == 27
    monkeypatch.setattr(spark, "PROGRESS_EVERY_S", 0.5)
    status, log = score("spark", "imdb_sentiment", str(source), "-o", str(tmp_path / "spark.parquet"), "--keep-columns")
    assert status == codes.EXIT_ROWS_FAILED, log
    assert "3,000 rows in = 2,973 scored + 27 failed" in log, log
    assert f"imdb_sentiment v{SERVED['imdb_sentiment']}: scoring, " in log and "tasks done" in log, "progress lines while it scores"
    local_status, local_log = score("local", "imdb_sentiment", str(source), "-o", str(tmp_path / "local.parquet"), "--keep-columns")
    assert local_status == codes.EXIT_ROWS_FAILED, local_log

    assert_same_answers(by_key(read(tmp_path / "spark.parquet"), "row"), by_key(read(tmp_path / "local.parquet"), "row"))
    spark_errors = by_key(read(tmp_path / "spark.errors.parquet"), "row")
    local_errors = by_key(read(tmp_path / "local.errors.jsonl"), "row")
    assert spark_errors == local_errors, "the same reason for every refused row"
    assert sorted(spark_errors) == sorted(bad)
    for row, why in bad.items():
        assert why in spark_errors[row]["reason"]


def test_csv_with_line_breaks_empty_fields_and_short_rows(tmp_path: Path, session: Any) -> None:
    """Quoted line breaks, "" fields and a row with too few fields: Spark's CSV reader gives the rows Python's csv gives."""
    rng = np.random.default_rng(6)
    lines = ["id,Review,note"]
    for i in range(300):
        text = review(rng, positive=bool(i % 2))
        lines.append(f'r{i},"{text}\nsecond line, with a comma and ""quotes""",n{i}' if i % 7 == 0 else f"r{i},{text},")
    lines += ["r300,,empty review", 'r301,"   \n  ",blank review', "r302 has one field"]
    source = tmp_path / "reviews.csv"
    source.write_text("\n".join(lines) + "\n")
    status, log = score("spark", "imdb_sentiment", str(source), "-o", str(tmp_path / "spark.csv"), "--keep-columns")
    assert status == codes.EXIT_ROWS_FAILED and "303 rows in = 300 scored + 3 failed" in log, log
    score("local", "imdb_sentiment", str(source), "-o", str(tmp_path / "local.jsonl"), "--keep-columns")

    local = by_key(read(tmp_path / "local.jsonl"), "row")
    spark_rows = read(tmp_path / "spark.csv")
    assert {int(r["row"]) for r in spark_rows} == set(local)
    for row in spark_rows:
        expected = local[int(row["row"])]
        assert row["label"] == expected["label"] and row["input_Review"] == expected["input_Review"], row["row"]
        assert row["input_note"] == expected["input_note"], "an empty field is kept as an empty text"
        assert float(row["probability_positive"]) == pytest.approx(expected["probability_positive"], abs=TOLERANCE)
    errors = {int(r["row"]): r["reason"] for r in read(tmp_path / "spark.errors.csv")}
    assert errors == {r["row"]: r["reason"] for r in read(tmp_path / "local.errors.jsonl")}
    assert errors[302] == "CSV row has 1 fields, the header has 3"


# ---------------------------------------------------------------- images


def write_images(root: Path) -> None:
    rng = np.random.default_rng(8)
    cat = (FIXTURES / "cat.jpg").read_bytes()
    files = {
        "cats/cat.jpg": cat,
        "dogs/dog.jpg": (FIXTURES / "dog.jpg").read_bytes(),
        "dogs/more/dog gray.png": image_bytes(Image.open(FIXTURES / "dog.jpg").convert("L"), "PNG"),
        "Z_upper.JPG": image_bytes(class_image(rng, (200, 50, 40), 64), "JPEG"),
        "misc/blue.webp": image_bytes(class_image(rng, (40, 60, 200), 80), "WEBP"),
        "cats/truncated.jpg": cat[: len(cat) // 2],
        "dogs/empty.png": b"",
        "misc/not_an_image.jpg": b"just text in a file called .jpg\n",
        "misc/notes.txt": b"not an input: no image suffix\n",
        ".hidden/ignored.jpg": cat,
    }
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)


def test_image_folder_with_corrupt_empty_and_non_image_files(tmp_path: Path, session: Any) -> None:
    write_images(tmp_path / "images")
    status, log = score("spark", "image_classifier", str(tmp_path / "images"), "-o", str(tmp_path / "spark.jsonl"))
    assert status == codes.EXIT_ROWS_FAILED, log
    assert "skipping 1 file(s) without an input suffix: misc/notes.txt" in log
    assert "8 images in = 5 scored + 3 failed" in log, log
    score("local", "image_classifier", str(tmp_path / "images"), "-o", str(tmp_path / "local.jsonl"))

    spark_rows = by_key(read(tmp_path / "spark.jsonl"), "path")
    assert "dogs/more/dog gray.png" in spark_rows and "cats/cat.jpg" in spark_rows
    assert_same_answers(spark_rows, by_key(read(tmp_path / "local.jsonl"), "path"))
    errors = by_key(read(tmp_path / "spark.errors.jsonl"), "path")
    assert errors == by_key(read(tmp_path / "local.errors.jsonl"), "path")
    assert "is truncated or corrupt" in errors["cats/truncated.jpg"]["reason"]
    assert "is empty" in errors["dogs/empty.png"]["reason"]
    assert "is not a supported image" in errors["misc/not_an_image.jpg"]["reason"]
    ran = [line for line in log.splitlines() if line.startswith("model file on ")]
    assert ran[0].startswith("model file on the driver: ") and len(ran) >= 2, log
    files = {re.search(r": (model[\w.]*\.onnx) \(", line).group(1) for line in ran}  # type: ignore[union-attr]
    assert len(files) == 1, f"executors run the driver's file: {ran}"


def test_each_executor_checks_the_int8_variant_on_its_cpu_and_the_summary_says_what_ran(tmp_path: Path, session: Any) -> None:
    """A variant that disagrees with fp32 on its reference set is not used on any executor: model.onnx scores, and the summary says why."""
    registry = tiny_registry(tmp_path / "registry")
    version = with_variant(registry)
    disagreeing(version)
    registry.promote("image_classifier", version.version)
    folder = tmp_path / "photos"
    folder.mkdir()
    inputs, _ = photos(12, seed=6)
    for i, image in enumerate(inputs):
        Image.fromarray(image).save(folder / f"{i:02d}.png")
    stream = io.StringIO()
    args = ["image_classifier", str(folder), "-o", str(tmp_path / "scores.jsonl"), "--model-root", str(registry.root)]
    status = cli.main([*args, "--engine", "spark"], stream=stream)
    log = stream.getvalue()
    assert status == codes.EXIT_OK and "12 images in = 12 scored + 0 failed" in log, log
    ran = [line for line in log.splitlines() if line.startswith("model file on ")]
    assert len(ran) >= 2 and all("model.onnx (fp32: INT8 variant not used: on this CPU (" in line for line in ran), log
    assert all("same label as fp32 on 0 of 16 reference inputs" in line for line in ran), log
    fp32 = load_model(version, ["CPUExecutionProvider"], int8=False).predict(list(inputs))
    rows = by_key(read(tmp_path / "scores.jsonl"), "path")
    assert [rows[f"{i:02d}.png"]["label"] for i in range(12)] == [a["label"] for a in fp32], "model.onnx's answers"


# ---------------------------------------------------------------- house rows


def house_columns(n: int, seed: int) -> dict[str, list[Any]]:
    x, _ = housing_rows(n, seed=seed)
    return {name.lower() if i % 2 else name: [float(v) for v in x[:, i]] for i, name in enumerate(BOSTON_FEATURES)}


def test_parquet_house_rows_with_nan_null_and_negative_crim(tmp_path: Path, session: Any) -> None:
    """Two Parquet files in a folder: rows are numbered per file, and refused rows get the single-machine reasons."""
    folder = tmp_path / "houses"
    folder.mkdir()
    for part in range(2):
        columns = house_columns(50, seed=part)
        columns["NOX"][5] = math.nan
        columns["rm"][9] = None
        columns["CRIM"][11] = -0.5  # a log-scaled feature below zero
        columns["id"] = [f"house-{part}-{i}" for i in range(50)]  # a string column: not a feature, kept
        pq.write_table(pa.table(columns), folder / f"part-{part}.parquet", row_group_size=20)
    args = ["boston_housing", str(folder), "-o", str(tmp_path / "spark.parquet"), "--keep-columns", "--input-format", "parquet"]
    status, log = score("spark", *args)
    assert status == codes.EXIT_ROWS_FAILED and "100 rows in = 94 scored + 6 failed" in log, log

    spark_rows = read(tmp_path / "spark.parquet")
    spark_errors = read(tmp_path / "spark.errors.parquet")
    for part in range(2):
        source = folder / f"part-{part}.parquet"
        score("local", "boston_housing", str(source), "-o", str(tmp_path / f"local-{part}.parquet"), "--keep-columns")
        mine = {r["row"]: {k: v for k, v in r.items() if k != "file"} for r in spark_rows if r["file"].endswith(source.name)}
        assert_same_answers(mine, by_key(read(tmp_path / f"local-{part}.parquet"), "row"))
        errors = {r["row"]: r["reason"] for r in spark_errors if r["file"].endswith(source.name)}
        local_errors = {r["row"]: r["reason"] for r in read(tmp_path / f"local-{part}.errors.jsonl")}
        assert errors == local_errors
        assert "feature NOX is nan" in errors[5] and "missing features ['RM']" in errors[9] and "feature CRIM must be >= 0" in errors[11]


def test_a_csv_cell_that_is_no_number_is_refused_as_over_http(tmp_path: Path, session: Any) -> None:
    """CSV cells are text to Spark: one that is no number is a refused row with the HTTP reason, the rest are scored."""
    columns = house_columns(30, seed=4)
    columns["rm"][2] = "seven"
    columns["CRIM"][3] = -1.0
    source = tmp_path / "houses.csv"
    names = list(columns)
    source.write_text(",".join(names) + "\n" + "".join(",".join(str(columns[c][i]) for c in names) + "\n" for i in range(30)))
    status, log = score("spark", "boston_housing", str(source), "-o", str(tmp_path / "prices.parquet"))
    assert status == codes.EXIT_ROWS_FAILED, log
    assert "30 rows in = 28 scored + 2 failed" in log, log
    score("local", "boston_housing", str(source), "-o", str(tmp_path / "local.parquet"))
    assert_same_answers(by_key(read(tmp_path / "prices.parquet"), "row"), by_key(read(tmp_path / "local.parquet"), "row"))
    errors = {r["row"]: r["reason"] for r in read(tmp_path / "prices.errors.parquet")}
    assert errors == {r["row"]: r["reason"] for r in read(tmp_path / "local.errors.jsonl")}
    assert errors[2] == "row: feature RM must be a number, got str" and "feature CRIM must be >= 0" in errors[3]


# ---------------------------------------------------------------- failures


def test_model_file_with_a_wrong_checksum_is_refused_on_the_executor(tmp_path: Path, session: Any) -> None:
    """The driver's copy is sound; the executors' (a shared root) is not: the job fails, names why, and writes nothing."""
    executor_root = tmp_path / "executor-models"
    shutil.copytree(MODEL_ROOT / "boston_housing", executor_root / "boston_housing")
    model_file = executor_root / "boston_housing" / str(SERVED["boston_housing"]) / "model.onnx"
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    source = tmp_path / "houses.parquet"
    pq.write_table(pa.table(house_columns(20, seed=9)), source)
    out = tmp_path / "prices.parquet"

    # The workers' cache holds sessions of this version loaded by earlier jobs: the copy named here is verified all the same.
    assert score("spark", "boston_housing", str(source), "-o", str(tmp_path / "warm.parquet"))[0] == codes.EXIT_OK
    args = ["boston_housing", str(source), "-o", str(out), "--executor-model-root", str(executor_root)]
    status, log = score("spark", *args)
    assert status == codes.EXIT_FAILED, log
    assert "the Spark job failed, nothing was written" in log and "checksum mismatch for model.onnx" in log, log
    assert f"boston_housing v{SERVED['boston_housing']} on " in log, "the message says which executor refused"
    assert not out.exists() and not (tmp_path / "prices.errors.parquet").exists()

    status, log = score("spark", *args[:4])  # the same job with the files shipped from the driver
    assert status == codes.EXIT_OK, log
    assert "20 rows in = 20 scored + 0 failed" in log
    status, log = score("spark", *args[:4])
    assert status == codes.EXIT_USAGE and "exists; --overwrite replaces it" in log

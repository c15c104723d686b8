"""Batch scoring against a full disk, a read-only output folder, SIGTERM, and rows that would give NaN.

Each job is the CLI in its own process, as a user runs it; a stopped or failed job
is run again and its result must hold every input exactly once.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.launch import ROOT
from service.core import errors as codes
from tests.faults.faultlib import SHIPPED, TABULAR
from tests.generate import housing_rows
from training.datasets import BOSTON_FEATURES

pytestmark = pytest.mark.integration

ROWS = 20_000


def write_houses(path: Path, n: int = ROWS) -> Path:
    x, _ = housing_rows(n, seed=3)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(BOSTON_FEATURES)
        writer.writerows([f"{v:.4f}" for v in row] for row in x)
    return path


def batch(*args: str, limit_file_bytes: int | None = None, obey_permissions: bool = False) -> subprocess.Popen[str]:
    """`python -m service.batch` in its own process; optionally with a file-size limit (a full disk).

    `obey_permissions`: as root, run without the capabilities that let root write anywhere.
    """

    def limits() -> None:
        if limit_file_bytes is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_bytes, limit_file_bytes))

    command = [sys.executable, "-m", "service.batch", TABULAR, *args, "--model-root", str(SHIPPED), "--executor", "thread"]
    if obey_permissions and os.geteuid() == 0:
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *command]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    return subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True, preexec_fn=limits)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def rows_of(path: Path) -> list[int]:
    with open(path, newline="") as handle:
        return [int(r["row"]) for r in csv.DictReader(handle)]


def test_a_read_only_output_folder_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """Defect 10: a read-only output directory gave a raw traceback."""
    source = write_houses(tmp_path / "houses.csv", 100)
    if os.geteuid() == 0 and not shutil.which("setpriv"):
        pytest.skip("root writes anywhere, and setpriv (util-linux) is not here to drop that capability")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    job = batch(str(source), "-o", str(folder / "prices.csv"), obey_permissions=True)
    _, err = job.communicate(timeout=120)
    assert job.returncode == codes.EXIT_USAGE, err
    assert "Traceback" not in err
    assert error_lines(err) == [f"error: cannot write to {folder} (Permission denied); OUTPUT and the errors file go there"], err


def test_a_full_disk_fails_the_job_and_the_rerun_completes_it_exactly_once(tmp_path: Path) -> None:
    source = write_houses(tmp_path / "houses.csv")
    out = tmp_path / "prices.csv"
    args = [str(source), "-o", str(out), "--chunk-size", "2000"]
    job = batch(*args, limit_file_bytes=300_000)  # the parts fit, the assembled 1.5 MB output does not
    _, err = job.communicate(timeout=300)
    assert job.returncode == codes.EXIT_FAILED, err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "File too large" in line, err
    assert f"{ROWS:,} of {ROWS:,} rows committed; run the same command again to resume" in err
    assert not out.exists() or out.stat().st_size <= 300_000

    job = batch(*args)
    _, err = job.communicate(timeout=300)
    assert job.returncode == codes.EXIT_OK, err
    assert rows_of(out) == list(range(ROWS)), "every row exactly once, in order"


def test_sigterm_stops_the_job_and_the_rerun_resumes_exactly_once(tmp_path: Path) -> None:
    n = 5 * ROWS
    source = write_houses(tmp_path / "houses.csv", n)
    out = tmp_path / "prices.csv"
    args = [str(source), "-o", str(out), "--chunk-size", "1000", "--workers", "1"]
    state = tmp_path / ".prices.csv.batch" / "state.json"
    job = batch(*args)
    deadline = time.monotonic() + 120
    while not (state.exists() and json.loads(state.read_text() or "{}").get("position", 0) >= 2000):
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()[1]
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=60)
    assert job.returncode == codes.EXIT_INTERRUPTED, err
    committed = json.loads(state.read_text())["position"]
    assert 0 < committed < n and f"interrupted: {committed:,} of {n:,} rows committed" in err

    job = batch(*args)
    _, err = job.communicate(timeout=300)
    assert job.returncode == codes.EXIT_OK, err
    assert f"resuming {out}: {committed:,} of {n:,} rows already done" in err
    assert rows_of(out) == list(range(n))


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_rows_that_would_give_nan_are_listed_never_written(tmp_path: Path, suffix: str) -> None:
    """NaN is never written into JSON: inputs that overflow the model are failed rows with a reason."""
    good = [0.06, 0.0, 2.46, 0.0, 0.488, 7.8, 53.6, 3.2, 3.0, 193.0, 17.8, 392.6, 3.0]
    rows = [good, [*good[:4], 1e300, *good[5:]], [-0.06, *good[1:]], [*good[:3], -1e300, *good[4:]], good]
    source = tmp_path / "houses.jsonl"
    source.write_text("".join(json.dumps(dict(zip(BOSTON_FEATURES, row))) + "\n" for row in rows))
    out = tmp_path / f"prices.{suffix}"
    job = batch(str(source), "-o", str(out))
    _, err = job.communicate(timeout=120)
    assert job.returncode == codes.EXIT_ROWS_FAILED, err
    errors = [json.loads(line) for line in (tmp_path / "prices.errors.jsonl").read_text().splitlines()]
    assert [e["row"] for e in errors] == [1, 2, 3]
    assert "NOX is 1e+300, too large for the model" in errors[0]["reason"] and "CRIM must be >= 0" in errors[1]["reason"]
    if suffix == "jsonl":
        text = out.read_text()
        assert "NaN" not in text and "Infinity" not in text
        assert [json.loads(line)["row"] for line in text.splitlines()] == [0, 4]

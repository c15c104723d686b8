"""Many models on one host: start-up time and memory per worker with 1, 10 and 30 models.

    python -m benchmarks.many_models [--counts 1,10,30] [--kinds tabular,text,image]

The registry is the catalog, so a host may serve a team's dozens of models. Copies of
the shipped models' CURRENT versions, each under a name of its own, stand in for them:
every copy is a separate model, verified, opened, smoke-tested and warmed like any
other (tabular: the Boston ensemble, 0.1 MB; text: the IMDB model, a 200,000-n-gram
vocabulary; image: MobileNetV2, INT8 on this CPU). For each kind and count, one
`bentoml serve` with one worker: the seconds from launch until /readyz says ready, the
worker's RSS then and after one request to every model, and how long one more model
copied into the registry while it serves takes to be served (the poll interval is 1 s).
Prints a table; writes benchmarks/results/many_models.md and many_models.png.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.launch import ROOT, start_server
from benchmarks.load import RESULTS
from benchmarks.report import figure, save_markdown
from service.core.registry import CURRENT_FILE, Registry

# A shipped model per kind (read by its kind, never by name: the registry is the catalog).
SOURCES = {"tabular": "boston_housing", "text": "imdb_sentiment", "image": "image_classifier"}
BODIES = {
    "tabular": lambda: {"json": {"rows": [[0.06, 0, 2.46, 0, 0.488, 7.8, 53.6, 3.2, 3, 193, 17.8, 392.6, 3.0]]}},
    "text": lambda: {"json": {"texts": ["A moving, beautifully acted film."]}},
    "image": lambda: {"files": [("images", ("cat.jpg", (ROOT / "tests" / "fixtures" / "cat.jpg").read_bytes()))]},
}
ADD_WAIT_S = 120
POLL_S = "1"


@dataclass
class Run:
    kind: str
    models: int
    start_s: float
    rss_ready_mib: float
    rss_used_mib: float
    add_s: float


def copy_model(source: str, root: Path, name: str) -> None:
    """The source's CURRENT version as version 1 of `name`, CURRENT last (as a user would promote it)."""
    version = Registry(ROOT / "models").current(source)
    shutil.copytree(version.path, root / name / "1")
    (root / name / CURRENT_FILE).write_text("1\n")


def worker_rss_mib(client: httpx.Client) -> float:
    """RSS of the server's worker(s), by the pids GET /models lists."""
    workers = client.get("/models").json()["workers"]
    return sum(psutil.Process(w["pid"]).memory_info().rss for w in workers) / 2**20


def measure(kind: str, count: int, work: Path) -> Run:
    root = work / f"{kind}-{count}"
    for i in range(count):
        copy_model(SOURCES[kind], root, f"{kind}-{i:03d}")
    started = time.monotonic()
    server = start_server(root, work / f"{kind}-{count}.log", MODELSERVE_WORKERS="1", MODELSERVE_RELOAD_POLL_S=POLL_S)
    start_s = time.monotonic() - started
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            rss_ready = worker_rss_mib(client)
            for i in range(count):
                response = client.post(f"/models/{kind}-{i:03d}/predict", **BODIES[kind]())
                assert response.status_code == 200, response.text
            rss_used = worker_rss_mib(client)
            return Run(kind, count, start_s, rss_ready, rss_used, time_to_add(client, kind, root))
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def time_to_add(client: httpx.Client, kind: str, root: Path) -> float:
    """Seconds from copying one more model into the registry to its being served."""
    started = time.monotonic()
    copy_model(SOURCES[kind], root, f"{kind}-new")
    while time.monotonic() - started < ADD_WAIT_S:
        if any(m["name"] == f"{kind}-new" for m in client.get("/models").json()["models"]):
            return time.monotonic() - started
        time.sleep(0.1)
    raise RuntimeError(f"{kind}-new not served within {ADD_WAIT_S} s")


def table(runs: list[Run]) -> list[str]:
    lines = [
        "| kind | models | start to ready (s) | worker RSS ready (MiB) | after a request to each (MiB) | per model (MiB) | one more added while serving (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        first = next(r for r in runs if r.kind == run.kind)
        per_model = (run.rss_used_mib - first.rss_used_mib) / (run.models - first.models) if run.models > first.models else float("nan")
        lines.append(
            f"| {run.kind} | {run.models} | {run.start_s:.1f} | {run.rss_ready_mib:,.0f} | {run.rss_used_mib:,.0f} | "
            f"{'' if run.models == first.models else f'{per_model:.1f}'} | {run.add_s:.1f} |"
        )
    return lines


def plot(runs: list[Run], path: Path) -> None:
    with figure(path, 1, 2) as (_, axes):
        for kind in dict.fromkeys(r.kind for r in runs):
            mine = [r for r in runs if r.kind == kind]
            axes[0, 0].plot([r.models for r in mine], [r.rss_used_mib for r in mine], marker="o", label=kind)
            axes[0, 1].plot([r.models for r in mine], [r.start_s for r in mine], marker="o", label=kind)
        axes[0, 0].set(title="Worker RSS after a request to every model", xlabel="models served", ylabel="MiB")
        axes[0, 1].set(title="Launch to ready", xlabel="models served", ylabel="seconds")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="1,10,30")
    parser.add_argument("--kinds", default="tabular,text,image")
    args = parser.parse_args(argv)
    counts, kinds = [int(c) for c in args.counts.split(",")], args.kinds.split(",")
    work = Path(tempfile.mkdtemp(prefix="many-models-"))
    runs: list[Run] = []
    try:
        for kind in kinds:
            for count in counts:
                runs.append(measure(kind, count, work))
                print(table(runs)[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = table(runs)
    print("\n".join(lines))
    machine: dict[str, Any] = {"cores": psutil.cpu_count(), "memory": psutil.virtual_memory().total / 2**30}
    note = f"One worker, CPU ({platform.machine()}, {machine['cores']} cores, {machine['memory']:.0f} GiB). `python -m benchmarks.many_models --counts {args.counts} --kinds {args.kinds}`."
    save_markdown(RESULTS / "many_models.md", [*lines, "", note])
    plot(runs, RESULTS / "many_models.png")


if __name__ == "__main__":
    main()

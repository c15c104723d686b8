"""Where one client's request spends its time: py-spy on a real `bentoml serve` driven by hey with one client.

    python -m benchmarks.profile_request [--endpoints classify_image,sentiment] [--seconds 20] [--workers 1] [--project ../main]

The service is started on models/ (one worker by default, so every request lands in the
profiled process), hey sends one real item per request from one client, and py-spy samples
every thread of the worker while it does (idle threads are not sampled). Each sample's
stack is put in the first stage it passes through (STAGES, in order), so the table says
what share of the worker's busy time each stage of the request path takes: the guard's
checks, BentoML's parsing, the hop to a worker thread, decoding, tokenising, onnxruntime,
building the response. Writes benchmarks/results/profile_request.md and .png, and the raw
collapsed stacks (profile_<endpoint>.txt, for speedscope or flamegraph.pl) beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from benchmarks.launch import ROOT, start_server
from benchmarks.load import RESULTS, payloads, run_hey
from benchmarks.report import bars, figure, save_markdown

PY_SPY = Path(sys.executable).with_name("py-spy")
# Innermost frames where a thread waits: py-spy's idle detection misses some of these on a busy
# machine (a thread blocked on a lock shows as running), so they are dropped here.
IDLE = re.compile(
    r"^(_worker \(concurrent/futures/thread\.py:81\)|Runner\.run \(asyncio/runners\.py|CurrentWatcher\._run|.*\.wait \(threading\.py"
    r"|select \(selectors\.py|_run_once \(asyncio/base_events\.py)"
)
# (stage, pattern matched against one frame "function (file:line)"), tried in order for every frame from
# the innermost outwards, so a sample lands in the most specific stage it is in.
STAGES: list[tuple[str, str]] = [
    ("onnxruntime session run", r"^run \(.*onnxruntime.*session\.py|_run \(.*service/core/sessions\.py"),
    ("image decode + resize", r"decode_opened|decode_image"),
    ("image header check", r"open_image"),
    ("text tokenising + vectorising", r"token_ids|transform_sparse|transform \(.*preprocessing|_row \(.*preprocessing"),
    ("answers (outputs -> JSON objects)", r"answers \(.*service/core/tasks"),
    ("metrics", r"service/http/metrics\.py|prometheus_client"),
    ("guard: multipart check", r"multipart_problem"),
    ("guard: body read, checks", r"service/http/guard\.py"),
    (
        "request parsing (BentoML, Starlette forms, pydantic)",
        r"python_multipart|starlette/formparsers|pydantic|_bentoml_sdk/io_models|_bentoml_impl/server/serde",
    ),
    ("thread hop (executor)", r"run_in_executor|concurrent/futures/thread|threading\.py"),
    ("response (JSON, headers)", r"json/encoder|starlette/responses"),
    ("BentoML app + middleware", r"_bentoml_impl|bentoml/_internal|starlette/middleware|opentelemetry"),
    ("HTTP server (uvicorn, h11/httptools)", r"uvicorn|h11|httptools"),
    ("event loop", r"asyncio|uvloop"),
]


def worker_pids(root_pid: int) -> list[int]:
    """The service's worker processes (children of BentoML's arbiter that run the service)."""
    import psutil

    children = psutil.Process(root_pid).children(recursive=True)
    return [p.pid for p in children if "_bentoml_impl.worker" in " ".join(p.cmdline())] or [p.pid for p in children]


def record(pids: list[int], seconds: float, out: Path) -> list[subprocess.Popen[bytes]]:
    """One py-spy per worker, writing collapsed stacks (one line per distinct stack: frames;...;frames count)."""
    procs = []
    for pid in pids:
        command = [str(PY_SPY), "record", "--pid", str(pid), "--duration", f"{seconds:.0f}", "--rate", "250", "--threads"]
        command += ["--format", "raw", "--output", str(out.with_suffix(f".{pid}.txt")), "--nonblocking"]
        procs.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    return procs


def stage_of(stack: str) -> str:
    frames = stack.split(";")
    if IDLE.match(frames[-1]):
        return "idle"
    for frame in reversed(frames):
        for stage, pattern in STAGES:
            if re.search(pattern, frame):
                return stage
    return "other"


def summarise(paths: list[Path]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if count.isdigit():
                counts[stage_of(stack)] += int(count)
    return counts


def profile(url: str, pids: list[int], endpoint: str, seconds: float, make: Callable[[int], dict]) -> tuple[Counter[str], int, list[str]]:
    """(busy samples per stage, idle samples, the Markdown section) for one endpoint driven by one client."""
    asyncio.run(run_hey(url, endpoint, 1, 3, make))  # warm
    stem = RESULTS / f"profile_{endpoint}"
    spies = record(pids, seconds + 1, stem)
    time.sleep(0.5)
    run = asyncio.run(run_hey(url, endpoint, 1, seconds, make))
    for spy in spies:
        spy.wait()
    parts = sorted(stem.parent.glob(f"{stem.name}.*.txt"))
    stem.with_suffix(".txt").write_text("".join(p.read_text() for p in parts))
    for part in parts:
        part.unlink()
    counts = summarise([stem.with_suffix(".txt")])
    idle = counts.pop("idle", 0)
    total = sum(counts.values()) or 1
    p50, p99 = run.p50_p99()
    section = [
        f"## /{endpoint}: {sum(run.codes.values()) / run.seconds:,.0f} req/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms\n",
        "| stage | share of busy samples |",
        "|---|---:|",
        *[f"| {stage} | {n / total:.1%} |" for stage, n in counts.most_common()],
        "",
        f"{total:,} busy samples; {idle:,} samples of threads waiting were left out.",
        "",
    ]
    return counts, idle, section


def plot(results: dict[str, Counter[str]], path: Path) -> None:
    with figure(path, 1, len(results), size=(7 * len(results), 5)) as (_, axes):
        for ax, (endpoint, counts) in zip(axes[0], results.items(), strict=True):
            total = sum(counts.values()) or 1
            ranked = counts.most_common()
            values = [100 * n / total for _, n in ranked]
            bars(ax, [s for s, _ in ranked], values, ["tab:blue"] * len(ranked), f"/{endpoint}", "% of busy samples")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoints", default="classify_image,sentiment")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--models", default=str(ROOT / "models"))
    parser.add_argument("--project", default=str(ROOT), help="the checkout whose code is served (another worktree: its code, e.g. main's)")
    parser.add_argument("--out", default="profile_request", help="results file stem under benchmarks/results/")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="profile-"))
    server = start_server(Path(args.models), work / "server.log", project=Path(args.project), MODELSERVE_WORKERS=str(args.workers))
    makers = payloads()
    RESULTS.mkdir(exist_ok=True)
    lines = [
        f"# One client, profiled\n\npy-spy {args.seconds:.0f} s per endpoint at 250 Hz on {args.workers} worker(s), hey with 1 client, "
        f"one real item per request; {len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.1f} at the start.\n",
        "Share of the worker's busy samples per stage (each sample counted once, in the innermost stage it is in).\n",
    ]
    results: dict[str, Counter[str]] = {}
    try:
        pids = worker_pids(server.process.pid)
        for endpoint in args.endpoints.split(","):
            results[endpoint], _, section = profile(server.url, pids, endpoint, args.seconds, makers[endpoint])
            lines += section
            print("\n".join(section), flush=True)
    finally:
        server.stop()
    save_markdown(RESULTS / f"{args.out}.md", lines)
    plot(results, RESULTS / f"{args.out}.png")


if __name__ == "__main__":
    main()

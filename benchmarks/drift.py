"""What live drift costs the served traffic: p99 and req/s at 32 clients with drift on and off, in one run.

    python -m benchmarks.drift [--seconds 20] [--clients 32] [--rounds 2] [--endpoints sentiment,classify_image,predict_price]
    python -m benchmarks.drift --modes off,on,log       # also drift with the prediction log writing every request

Serves the same registry (default: models/, every worker count and setting as shipped)
once per mode and round, one server at a time (a server that starts empties BentoML's
shared metrics folder, which would zero the counters of another one still running), the
modes' order reversed every other round, and drives each endpoint with hey (one item
per request). Drift "on" is the default configuration: every request sampled
(MODELSERVE_DRIFT_SAMPLE=1), summarized in the drift thread, scored every 10 s. The
table also shows how many items the drift thread summarized and how many requests it
dropped (it keeps up when none are). Prints the table; writes benchmarks/results/drift.md
and drift.png.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

import httpx

from benchmarks.launch import ROOT, Server, start_server
from benchmarks.load import RESULTS, Run, payloads, run_hey
from benchmarks.report import figure
from service.core.catalog import RECIPES
from service.core.drift import PROFILE_FILE
from service.core.registry import Registry

MODES = {"off": {"MODELSERVE_DRIFT": "0"}, "on": {}, "log": {}}  # "log": drift on, and the prediction log (its folder is set below)
SAMPLED_RE = re.compile(r'modelserve_drift_sampled_items_total\{model="(\w+)",version="\d+"\} ([0-9.e+]+)')
DROPPED_RE = re.compile(r'modelserve_drift_dropped_requests_total\{model="(\w+)"\} ([0-9.e+]+)')


def counter(url: str, pattern: re.Pattern[str], model: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(float(value) for name, value in pattern.findall(text) if name == model)


def row(mode: str, run: Run, sampled: float, dropped: float) -> str:
    p50, p99 = run.p50_p99()
    total = sum(run.codes.values())
    return (f"| {run.endpoint} | {mode} | {run.clients} | {total / run.seconds:,.0f} | {p50:,.1f} | {p99:,.1f} | "
            f"{total - run.codes.get(200, 0)} | {sampled:,.0f} | {dropped:,.0f} |")  # fmt: skip


def plot(results: list[tuple[str, Run]], modes: list[str], path: Path) -> None:
    endpoints = list(dict.fromkeys(r.endpoint for _, r in results))
    with figure(path, 1, 2, size=(11, 4)) as (_, axes):
        width = 0.8 / len(modes)
        for i, mode in enumerate(modes):
            runs = {e: [r for m, r in results if m == mode and r.endpoint == e] for e in endpoints}
            positions = [j + i * width for j in range(len(endpoints))]
            axes[0][0].bar(positions, [statistics.median(r.p50_p99()[1] for r in runs[e]) for e in endpoints], width, label=f"drift {mode}")
            rates = [statistics.median(sum(r.codes.values()) / r.seconds for r in runs[e]) for e in endpoints]
            axes[0][1].bar(positions, rates, width, label=f"drift {mode}")
        for ax, label in zip(axes[0], ("p99 ms (median of rounds)", "requests/s (median of rounds)")):
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(endpoints))], [f"/{e}" for e in endpoints])
            ax.set_ylabel(label)


def environment(mode: str, work: Path) -> dict[str, str]:
    return MODES[mode] | ({"MODELSERVE_PREDICTION_LOG_DIR": str(work / "log")} if mode == "log" else {})


def measure(server: Server, mode: str, endpoint: str, model: str, clients: int, seconds: float, make: Any) -> tuple[Run, str]:
    """One hey run against `server`; the run and its table row (with the drift thread's counts during it)."""
    before = counter(server.url, SAMPLED_RE, model), counter(server.url, DROPPED_RE, model)
    run = asyncio.run(run_hey(server.url, endpoint, clients, seconds, make))
    sampled, dropped = counter(server.url, SAMPLED_RE, model) - before[0], counter(server.url, DROPPED_RE, model) - before[1]
    return run, row(mode, run, sampled, dropped)


def profiles(root: Path) -> str:
    registry = Registry(root)
    have = {name: (registry.current(name).path / PROFILE_FILE).is_file() for name in registry.served_models()}
    return ", ".join(f"{name} v{registry.current_version(name)} {'has' if ok else 'has NO'} profile" for name, ok in have.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--endpoints", default="sentiment,classify_image,predict_price")
    parser.add_argument("--modes", default="off,on")
    args = parser.parse_args()
    modes = args.modes.split(",")
    work = Path(tempfile.mkdtemp(prefix="drift-bench-"))
    names = {e.endpoint: name for name, e in RECIPES.items()}
    makers = payloads()
    header = [
        "| endpoint | drift | clients | req/s | p50 ms | p99 ms | non-200 | items summarized | requests dropped |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    results: list[tuple[str, Run]] = []
    lines: list[str] = []
    print(profiles(args.models) + "\n" + "\n".join(header), flush=True)
    try:
        for round_ in range(args.rounds):
            for mode in modes if round_ % 2 == 0 else modes[::-1]:
                server = start_server(args.models, work / f"server-{mode}-{round_}.log", **environment(mode, work))
                try:
                    for endpoint in args.endpoints.split(","):
                        run, line = measure(server, mode, endpoint, names[endpoint], args.clients, args.seconds, makers[endpoint])
                        results.append((mode, run))
                        lines.append(line)
                        print(line, flush=True)
                finally:
                    server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    note = (
        f"{args.seconds:.0f} s per row, {args.clients} clients, one item per request, hey on the same machine; {args.rounds} rounds, "
        f"one server at a time, the order of the modes reversed every other round. {profiles(args.models)}. Items summarized: counted by the drift "
        "thread during the row (0 when drift is off)."
    )
    (RESULTS / "drift.md").write_text("# The cost of live drift\n\n" + note + "\n\n" + "\n".join(header + lines) + "\n")
    plot(results, modes, RESULTS / "drift.png")


if __name__ == "__main__":
    main()

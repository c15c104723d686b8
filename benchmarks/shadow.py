"""What a shadow candidate costs the served traffic: req/s and latency with and without one, in one run.

    python -m benchmarks.shadow [--seconds 15] [--clients 8,32] [--endpoints sentiment,classify_image]

Serves a temporary registry holding the shipped models plus a copy of each as a second
version, drives each endpoint with hey (one item per request) with no candidate, then
with the copy as a shadow candidate (every request scored twice, off the response path),
alternating the two twice. Prints a table; writes benchmarks/results/shadow.md and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
from pathlib import Path

import httpx

from benchmarks.launch import ROOT, start_server
from benchmarks.load import RESULTS, Run, payloads, run_hey
from benchmarks.report import figure
from service.core.catalog import RECIPES
from service.core.registry import METADATA_FILE, Registry

TOKEN = "shadow-bench"
ROUNDS = 2


def registry_with_copies(work: Path) -> tuple[Path, dict[str, int]]:
    """The shipped registry with, per model, a copy of CURRENT as a new version; returns (root, copy versions)."""
    root = work / "models"
    shutil.copytree(ROOT / "models", root)
    copies = {}
    for name in Registry(root).served_models():
        current = Registry(root).current(name)
        copies[name] = max(Registry(root).versions(name)) + 1
        target = root / name / str(copies[name])
        shutil.copytree(current.path, target)
        metadata = json.loads((target / METADATA_FILE).read_text())
        metadata["version"] = copies[name]
        (target / METADATA_FILE).write_text(json.dumps(metadata))
    return root, copies


def set_shadow(url: str, name: str, version: int | None) -> None:
    body = {"model": name, "clear": True} if version is None else {"model": name, "version": version, "mode": "shadow"}
    response = httpx.post(f"{url}/admin/candidate", json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
    response.raise_for_status()


def row(mode: str, run: Run) -> str:
    p50, p99 = run.p50_p99()
    total = sum(run.codes.values())
    return f"| {run.endpoint} | {mode} | {run.clients} | {total / run.seconds:,.0f} | {p50:,.1f} | {p99:,.1f} | {total - run.codes.get(200, 0)} |"


def plot(results: list[tuple[str, Run]], path: Path) -> None:
    endpoints = list(dict.fromkeys(r.endpoint for _, r in results))
    with figure(path, 1, len(endpoints)) as (_, axes):
        for ax, endpoint in zip(axes[0], endpoints, strict=True):
            for mode in ("no candidate", "shadow candidate"):
                runs = [r for m, r in results if m == mode and r.endpoint == endpoint]
                clients = sorted({r.clients for r in runs})
                ax.plot(
                    clients, [max(sum(r.codes.values()) / r.seconds for r in runs if r.clients == c) for c in clients], "o-", label=mode
                )
            ax.set(title=f"/{endpoint}", xlabel="clients", ylabel="requests/s (best of rounds)", xscale="log")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", default="8,32")
    parser.add_argument("--endpoints", default="sentiment,classify_image")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shadow-bench-"))
    root, copies = registry_with_copies(work)
    names = {e.endpoint: name for name, e in RECIPES.items()}
    makers = payloads()
    server = start_server(root, work / "server.log", MODELSERVE_ADMIN_TOKEN=TOKEN, MODELSERVE_RELOAD_POLL_S="0")
    header = ["| endpoint | mode | clients | req/s | p50 ms | p99 ms | non-200 |", "|---|---|---:|---:|---:|---:|---:|"]
    print("\n".join(header), flush=True)
    results: list[tuple[str, Run]] = []
    try:
        for _ in range(ROUNDS):
            for endpoint in args.endpoints.split(","):
                for shadow in (False, True):
                    set_shadow(server.url, names[endpoint], copies[names[endpoint]] if shadow else None)
                    mode = "shadow candidate" if shadow else "no candidate"
                    for clients in map(int, args.clients.split(",")):
                        run = asyncio.run(run_hey(server.url, endpoint, clients, args.seconds, makers[endpoint]))
                        results.append((mode, run))
                        print(row(mode, run), flush=True)
                set_shadow(server.url, names[endpoint], None)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    note = f"{args.seconds:.0f} s per row, one item per request, hey on the same machine; {ROUNDS} rounds, the modes alternating."
    (RESULTS / "shadow.md").write_text(
        "# The cost of a shadow candidate\n\n" + note + "\n\n" + "\n".join(header + [row(m, r) for m, r in results]) + "\n"
    )
    plot(results, RESULTS / "shadow.png")


if __name__ == "__main__":
    main()

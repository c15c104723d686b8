"""The load benchmark on two commits, back to back in one run: did a change make serving slower?

    python -m benchmarks.commits 3154b11 HEAD --seconds 15 --rounds 2
    python -m benchmarks.commits main HEAD --own-models --endpoints sentiment --out text_e2e

Each commit is checked out into a temporary git worktree and served from there by this
environment's `bentoml serve` (on the same models/, or with --own-models on each
commit's own models/: a commit that ships a new version is measured with it), then
driven with the load benchmark's client (hey, else httpx) at each client count. Rounds
alternate the commits, so drift on the machine hits both alike. Prints a table, and the
ratio of the second commit's req/s to the first's per endpoint and client count (the
mean over the rounds); writes benchmarks/results/commits.md and commits.png (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from benchmarks.launch import ROOT, start_server
from benchmarks.load import RESULTS, Run, payloads, run_hey, run_load
from benchmarks.report import figure

HEADER = [
    "| commit | round | endpoint | clients | req/s | p50 ms | p99 ms | non-200 |",
    "|---|---:|---|---:|---:|---:|---:|---:|",
]


def checkout(rev: str, into: Path) -> tuple[Path, str]:
    """A detached worktree of `rev`; returns (its path, its short hash)."""
    short = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    path = into / short
    subprocess.run(["git", "worktree", "add", "--detach", "-f", str(path), rev], cwd=ROOT, capture_output=True, check=True)
    return path, short


def row(commit: str, round_: int, run: Run) -> str:
    p50, p99 = run.p50_p99()
    total = sum(run.codes.values())
    bad = total - run.codes.get(200, 0) + run.transport_errors
    return f"| {commit} | {round_} | {run.endpoint} | {run.clients} | {total / run.seconds:,.0f} | {p50:,.1f} | {p99:,.1f} | {bad} |"


def measure(trees: dict[str, Path], args: argparse.Namespace, work: Path) -> list[tuple[str, int, Run]]:
    makers = payloads()
    runner = run_hey if shutil.which("hey") else run_load
    results = []
    for round_ in range(1, args.rounds + 1):
        order = list(trees.items()) if round_ % 2 else list(reversed(trees.items()))
        for commit, tree in order:
            models = tree / "models" if args.own_models else ROOT / "models"
            server = start_server(models, work / f"{commit}-{round_}.log", project=tree)
            try:
                for endpoint in args.endpoints.split(","):
                    for clients in map(int, args.clients.split(",")):
                        run = asyncio.run(runner(server.url, endpoint, clients, args.seconds, makers[endpoint]))
                        results.append((commit, round_, run))
                        print(row(commit, round_, run), flush=True)
            finally:
                server.stop()
    return results


def ratios(results: list[tuple[str, int, Run]]) -> list[str]:
    """The second commit's mean req/s over the first's, per endpoint and client count."""
    commits = list(dict.fromkeys(c for c, _, _ in results))
    if len(commits) != 2:
        return []
    lines = [f"| endpoint | clients | {commits[0]} req/s | {commits[1]} req/s | ratio |", "|---|---:|---:|---:|---:|"]
    keys = dict.fromkeys((run.endpoint, run.clients) for _, _, run in results)
    for endpoint, clients in keys:
        means = []
        for commit in commits:
            rates = [
                sum(r.codes.values()) / r.seconds for c, _, r in results if c == commit and r.endpoint == endpoint and r.clients == clients
            ]
            means.append(sum(rates) / len(rates))
        lines.append(f"| {endpoint} | {clients} | {means[0]:,.0f} | {means[1]:,.0f} | {means[1] / means[0]:.2f}x |")
    return lines


def plot(results: list[tuple[str, int, Run]], path: Path) -> None:
    endpoints = list(dict.fromkeys(r.endpoint for _, _, r in results))
    with figure(path, 1, len(endpoints)) as (_, axes):
        for ax, endpoint in zip(axes[0], endpoints, strict=True):
            for commit in dict.fromkeys(c for c, _, _ in results):
                for round_ in sorted({r for _, r, _ in results}):
                    runs = [run for c, r, run in results if c == commit and r == round_ and run.endpoint == endpoint]
                    x = [run.clients for run in runs]
                    ax.plot(x, [sum(run.codes.values()) / run.seconds for run in runs], "o-", label=f"{commit} round {round_}")
            ax.set(title=endpoint, xlabel="concurrent clients", ylabel="requests/s", xscale="log")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revs", nargs=2, help="two git revisions, old then new")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--endpoints", default="classify_image,sentiment,predict_price")
    parser.add_argument("--own-models", action="store_true", help="serve each commit's own models/ (default: this checkout's)")
    parser.add_argument("--out", default="commits", help="results file stem under benchmarks/results/")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="commits-"))
    trees: dict[str, Path] = {}
    for rev in args.revs:
        tree, short = checkout(rev, work)
        trees[short] = tree
    print("\n".join(HEADER), flush=True)
    try:
        results = measure(trees, args, work)
    finally:
        for tree in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    RESULTS.mkdir(exist_ok=True)
    models = "each commit's own models/" if args.own_models else "this checkout's models/"
    note = (
        f"{args.seconds:.0f} s per row, one item per request, closed loop, hey on the same machine "
        f"({len(os.sched_getaffinity(0))} cores); rounds alternate the commits; served on {models}."
    )
    summary = ratios(results)
    print("\n".join(summary), flush=True)
    (RESULTS / f"{args.out}.md").write_text(
        f"# Load benchmark, two commits in one run\n\n`python -m benchmarks.commits {' '.join(args.revs)} ...`; {note}\n\n"
        + "\n".join([*summary, "", *HEADER, *[row(*r) for r in results]])
        + "\n"
    )
    plot(results, RESULTS / f"{args.out}.png")


if __name__ == "__main__":
    main()

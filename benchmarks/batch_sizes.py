"""Throughput of each served model's onnxruntime session per batch size: where batching stops paying.

    python -m benchmarks.batch_sizes [--models models] [--seconds 3]

Each task's CPU batch size (service/core/tasks) is the smallest batch that reaches
95% of the best items/s measured here: a larger batch only adds latency. Prints a table, writes benchmarks/results/batch_sizes.md and .png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.report import figure
from service.core.config import Settings
from service.core.runtime import ModelRuntime

RESULTS = Path(__file__).parent / "results"
SIZES = {
    "image_classifier": [1, 2, 4, 8, 16, 32, 64],
    "imdb_sentiment": [1, 4, 16, 32, 64, 128, 256],
    "boston_housing": [1, 8, 32, 128, 256, 512, 1024],
}
KNEE = 0.95


def measure(infer, feed: dict[str, np.ndarray], size: int, seconds: float) -> tuple[float, float]:
    """(items per second, median ms per call) for repeated calls on one batch of `size` items."""
    infer(feed)  # warm
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        infer(feed)
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    return size / median, median * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="models")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    runtime = ModelRuntime(Settings(model_root=Path(args.models), reload_poll_s=0))
    runtime.load_all()
    rows = ["| model | batch | items/s | ms per call |", "|---|---|---|---|"]
    curves: dict[str, list[tuple[int, float]]] = {}
    for name, model in runtime.served().items():
        single = model.task.smoke_items(model.assets)[:1]
        for size in SIZES[name]:
            per_second, ms = measure(model.infer, model.feed(single * size), size, args.seconds)
            curves.setdefault(name, []).append((size, per_second))
            rows.append(f"| {name} v{model.version} | {size} | {per_second:,.0f} | {ms:.2f} |")
            print(rows[-1], flush=True)
    rows.append("")
    rows.append(f"Smallest batch reaching {KNEE:.0%} of the best throughput (the chosen max_batch_size):")
    for name, points in curves.items():
        best = max(p for _, p in points)
        knee = next(size for size, p in points if p >= KNEE * best)
        rows.append(f"- {name}: {knee} ({best:,.0f} items/s at best)")
    text = "\n".join(rows)
    print("\n".join(rows[-len(curves) - 1 :]))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "batch_sizes.md").write_text(f"# onnxruntime throughput per batch size\n\nCPU: {runtime.providers}\n\n{text}\n")
    _plot(curves, RESULTS / "batch_sizes.png")


def _plot(curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    with figure(path, 1, len(curves), size=(5 * len(curves), 3.8)) as (_, axes):
        for ax, (name, points) in zip(axes[0], curves.items(), strict=True):
            sizes, rates = zip(*points, strict=True)
            ax.plot(sizes, rates, "o-")
            ax.set_xscale("log", base=2)
            ax.set(xlabel="batch size", ylabel="items/s", title=name)


if __name__ == "__main__":
    main()

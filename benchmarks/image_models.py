"""Image model versions side by side on this CPU, in one run: the bare session's img/s at batch 1 and 8.

    python -m benchmarks.image_models [--versions 2,3] [--rounds 3] [--seconds 3] [--int8]

Each version's model.onnx (and with --int8 its checked INT8 variant, where it has one) runs
in onnxruntime's CPU provider with the service's session options, on real photos decoded by
that version's own preprocessing (its resolution), in alternating rounds; the median round is
reported, so other work on the machine weighs on every file alike. The cost ratio is per
image against the first version named. Prints a table; writes
benchmarks/results/image_models.md and image_models.png.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.int8 import BATCHES, images_per_second
from benchmarks.launch import ROOT
from benchmarks.load import RESULTS, SHARED
from benchmarks.report import figure, save_markdown
from service.core.preprocessing import ImageSpec, decode_image
from service.core.registry import Registry
from service.core.sessions import SessionConfig, open_session

MODEL = "image_classifier"
MODELS = ROOT / "models"


def photos_for(metadata: dict) -> np.ndarray:
    spec = ImageSpec.from_json(metadata["preprocessing"])
    paths = sorted((SHARED / "cats_vs_dogs_small" / "test").rglob("*.jpg"))[:16] or sorted((ROOT / "tests" / "fixtures").glob("*.jpg"))
    return np.stack([decode_image(p.read_bytes(), spec) for p in paths])


def describe(metadata: dict) -> str:
    arch = metadata["architecture"]
    base = f"{arch['base']} {arch['alpha']}" if arch.get("alpha") else arch["base"]
    return f"{base} {metadata['inputs'][0]['shape'][1]}px"


Runs = dict[str, tuple[Path, np.ndarray, dict]]  # label -> (file, photos, metadata)


def versions_to_run(registry: Registry, versions: str | None, int8: bool) -> Runs:
    if versions:
        numbers = [int(v) for v in versions.split(",")]
    else:
        current, newest = registry.current_version(MODEL), max(registry.versions(MODEL))
        numbers = [n for n in dict.fromkeys([current, newest]) if n is not None]
    runs: Runs = {}
    for number in numbers:
        version = registry.get(MODEL, number)
        metadata = version.verify()
        photos = photos_for(metadata)
        runs[f"v{number} fp32"] = (version.model_path, photos, metadata)
        variant = metadata.get("variants", {}).get("int8", {})
        if int8 and variant.get("written"):
            runs[f"v{number} int8"] = (version.path / variant["file"], photos, metadata)
    return runs


def measure(runs: Runs, rounds: int, seconds: float, threads: int) -> dict[tuple[str, int], float]:
    """Median img/s per (run, batch size), rounds alternating the order of the runs."""
    cpu = SessionConfig(("CPUExecutionProvider",))
    sessions = {label: open_session(path, cpu, "", threads, spin=True) for label, (path, _, _) in runs.items()}
    samples: dict[tuple[str, int], list[float]] = {}
    for round_ in range(rounds):
        for size in BATCHES:
            for label in list(runs) if round_ % 2 == 0 else list(reversed(runs)):
                photos = runs[label][1]
                batch = np.ascontiguousarray(photos[np.arange(size) % len(photos)])
                samples.setdefault((label, size), []).append(images_per_second(sessions[label], batch, seconds))
    return {key: statistics.median(values) for key, values in samples.items()}


def table(runs: Runs, rates: dict[tuple[str, int], float]) -> list[str]:
    first = next(iter(runs))
    head = [f"session img/s batch {b}" for b in BATCHES] + [f"cost per image vs {first}, batch {b}" for b in BATCHES]
    lines = ["| file | network | MB | test accuracy | " + " | ".join(head) + " |", "|---|---|---:|---:|" + "---:|" * len(head)]
    for label, (path, _, metadata) in runs.items():
        accuracy = metadata["metrics"]["test"]["accuracy"]
        if label.endswith("int8"):
            accuracy = metadata["variants"]["int8"]["check"]["accuracy_int8"]
        cells = [f"{rates[(label, b)]:.1f}" for b in BATCHES] + [f"{rates[(first, b)] / rates[(label, b)]:.2f}x" for b in BATCHES]
        row = f"| {label} ({path.name}) | {describe(metadata)} | {path.stat().st_size / 1e6:.1f} | {accuracy:.4f} | "
        lines.append(row + " | ".join(cells) + " |")
    return lines


def draw(runs: Runs, rates: dict[tuple[str, int], float]) -> None:
    with figure(RESULTS / "image_models.png", size=(7, 4)) as (_, axes):
        ax, width = axes[0][0], 0.8 / len(runs)
        for i, label in enumerate(runs):
            values = [rates[(label, b)] for b in BATCHES]
            x = np.arange(len(BATCHES)) + (i - (len(runs) - 1) / 2) * width
            drawn = ax.bar(x, values, width, label=f"{label}: {describe(runs[label][2])}")
            ax.bar_label(drawn, labels=[f"{v:.0f}" for v in values], padding=2, fontsize=8)
        ax.set_xticks(np.arange(len(BATCHES)), [f"batch {b}" for b in BATCHES])
        ax.set(title=f"{MODEL}: bare session on the CPU", ylabel="images/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", help="comma-separated (default: CURRENT, then the newest if it differs)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--int8", action="store_true", help="also each version's INT8 variant, where one passed its check")
    args = parser.parse_args()
    runs = versions_to_run(Registry(MODELS), args.versions, args.int8)
    load_before, threads = os.getloadavg()[0], len(os.sched_getaffinity(0))
    rates = measure(runs, args.rounds, args.seconds, threads)
    processor = platform.processor() or platform.machine()
    lines = [
        f"{MODEL}, onnxruntime {ort.__version__} CPUExecutionProvider on {processor} with {threads} cores, the service's session options; "
        f"median of {args.rounds} alternating rounds of {args.seconds:g} s; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after.",
        "",
        *table(runs, rates),
    ]
    print("\n".join(lines))
    save_markdown(RESULTS / "image_models.md", ["# Image model versions on the CPU", "", "`python -m benchmarks.image_models`", "", *lines])
    draw(runs, rates)


if __name__ == "__main__":
    main()

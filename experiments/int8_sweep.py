"""INT8 recipes for the image model compared on this CPU: agreement with fp32 on test and shifted photos, on both kernel paths, and speed.

    nice -n 10 python -m experiments.int8_sweep [--data ../shared/data/cats_vs_dogs_small] [--version 1] [--per-shift 250] [--only "a;b"]

Each recipe (training/quantize.Recipe) is quantized from the version's model.onnx and
calibrated as the export does (256 training photos, seed 0), then compared with fp32:

- on this CPU's kernels: onnxruntime's fused int8 kernels as this machine picks them (on
  AVX2 or AVX-512 without VNNI, u8s8 products are summed in int16 pairs that can saturate;
  rows marked session.x64quantprecision set that session option, which makes onnxruntime
  run exact u8u8 kernels there instead);
- on the reference: the same QDQ graph in float arithmetic, i.e. what exact int8 kernels
  (AVX-512 VNNI, AVX-VNNI, AMX) compute, whatever CPU runs the sweep.

A recipe is right on every x86 CPU when both paths agree with fp32. Sets: the 1,000 test
photos, and `--per-shift` of them (every k-th) under each of the 12 shifts of
training/shifts.py. Speed: bare session, batch 8, one thread, INT8 and fp32 alternating.
Decoded photos, fp32 outputs, quantized files and measured rows are cached under
/tmp/int8-sweep (a stopped sweep goes on where it was; --fresh measures again).
Prints a Markdown table; writes experiments/results/int8_sweep.md.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.core.cpu import cpu_report
from service.core.preprocessing import ImageSpec
from service.core.registry import Registry
from training.quantize import Recipe, agreement, int8_session, probabilities, quantize_int8
from training.shifts import SHIFTS, shifted_inputs

CACHE = Path("/tmp/int8-sweep")
RESULTS = Path(__file__).parent / "results"
MODEL = "image_classifier"

# name -> (recipe, whether sessions set session.x64quantprecision: exact u8u8 kernels on CPUs without VNNI)
RECIPES: dict[str, tuple[Recipe, bool]] = {
    "u8s8 (v2's)": (Recipe(), False),
    "u8s8, session.x64quantprecision": (Recipe(), True),
    "u8s8 reduce_range": (Recipe(reduce_range=True), False),
    "u8u8": (Recipe(weights="uint8"), False),
    "s8s8": (Recipe(activations="int8"), False),
    "u8s8 per tensor": (Recipe(per_channel=False), False),
    "u8s8, first conv fp32": (Recipe(fp32_nodes=("first_conv",)), False),
    "u8s8, head fp32": (Recipe(fp32_nodes=("head",)), False),
    "u8s8, depthwise fp32": (Recipe(fp32_nodes=("depthwise",)), False),
    "u8s8, first conv and depthwise fp32": (Recipe(fp32_nodes=("first_conv", "depthwise")), False),
    "u8s8, first conv and head fp32": (Recipe(fp32_nodes=("first_conv", "head")), False),
    "u8s8 reduce_range, first conv fp32": (Recipe(reduce_range=True, fp32_nodes=("first_conv",)), False),
    "u8s8, first conv fp32, Percentile": (Recipe(method="Percentile", fp32_nodes=("first_conv",)), False),
    "u8s8, first conv fp32, Entropy": (Recipe(method="Entropy", fp32_nodes=("first_conv",)), False),
}


def cached(name: str, make: callable) -> np.ndarray:  # type: ignore[valid-type]
    path = CACHE / f"{name}.npy"
    if not path.exists():
        np.save(path, make())
    return np.load(path)


def photos(data: str, spec: ImageSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(training images, test images, test labels, test paths), decoded once by the service's preprocessing."""
    paths = CACHE / "test_paths.json"
    if not paths.exists():
        from training.datasets import load_image_folders

        loaded = load_image_folders(data, spec, seed=0)
        np.save(CACHE / "train.npy", loaded.train.images)
        np.save(CACHE / "test.npy", loaded.test.images)
        np.save(CACHE / "test_labels.npy", loaded.test.labels)
        paths.write_text(json.dumps(loaded.test.paths))
    return np.load(CACHE / "train.npy"), np.load(CACHE / "test.npy"), np.load(CACHE / "test_labels.npy"), json.loads(paths.read_text())


def shifted(paths: list[str], spec: ImageSpec) -> dict[str, np.ndarray]:
    """Every test photo under each shift (cached: 12 x 1,000 decodes)."""
    out = {}
    for shift in SHIFTS:
        started = time.monotonic()
        out[shift] = cached(f"shift_{shift}", lambda shift=shift: shifted_inputs(paths, spec, shift))
        if time.monotonic() - started > 1:
            print(f"  shifted {shift}: {time.monotonic() - started:.0f} s", flush=True)
    return out


def speed(session: ort.InferenceSession, batch: np.ndarray, seconds: float) -> float:
    session.run(None, {"image": batch})
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        session.run(None, {"image": batch})
        done += len(batch)
    return done / elapsed


def evaluate(
    path: Path, fp32: dict[str, np.ndarray], sets: dict[str, np.ndarray], labels: np.ndarray, reference: bool, u8u8: bool = False
) -> dict[str, dict]:
    session = int8_session(path, reference=reference, u8u8=u8u8)
    results = {}
    for name, inputs in sets.items():
        results[name] = agreement(fp32[name], probabilities(session, inputs), labels if name == "test" else None)
    return results


def summarise(results: dict[str, dict]) -> dict[str, float]:
    shifts = [r for name, r in results.items() if name != "test"]
    total = sum(r["samples"] for r in shifts)
    return {
        "test_agreement": results["test"]["label_agreement"],
        "test_max_diff": results["test"]["max_prob_diff"],
        "accuracy": results["test"]["accuracy_int8"],
        "accuracy_fp32": results["test"]["accuracy_fp32"],
        "shift_agreement": sum(r["label_agreement"] * r["samples"] for r in shifts) / total,
        "worst_shift_agreement": min(r["label_agreement"] for r in shifts),
        "shift_max_diff": max(r["max_prob_diff"] for r in shifts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/cats_vs_dogs_small")
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--per-shift", type=int, default=250, help="test photos per shift (every k-th of the 1,000)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per speed measurement")
    parser.add_argument("--only", default="", help="recipe names separated by ; (default: all)")
    parser.add_argument("--fresh", action="store_true", help="measure again the rows measured before (kept under /tmp/int8-sweep/results)")
    args = parser.parse_args()
    CACHE.mkdir(exist_ok=True)
    version = Registry("models").get(MODEL, args.version)
    own = CACHE if args.version == 1 else CACHE / f"v{args.version}"  # variants and rows per network (v1's stay where they were)
    (own / "variants").mkdir(parents=True, exist_ok=True)
    spec = ImageSpec.from_json(version.verify()["preprocessing"])
    decoded_as = CACHE / "spec.json"  # the decoded photos are shared by every version: only while their preprocessing is the same
    if decoded_as.exists() and json.loads(decoded_as.read_text()) != spec.to_json():
        raise SystemExit(
            f"{CACHE} holds photos decoded as {decoded_as.read_text()}; v{args.version} decodes as {spec.to_json()}: --fresh cache"
        )
    decoded_as.write_text(json.dumps(spec.to_json()))
    train, test, labels, paths = photos(args.data, spec)
    step = max(1, len(paths) // args.per_shift)
    sets = {"test": test} | {name: images[::step] for name, images in shifted(paths, spec).items()}
    fp32_session = ort.InferenceSession(str(version.model_path), providers=["CPUExecutionProvider"])
    fp32 = {
        name: cached(f"fp32_v{args.version}_{name}_{step}", lambda inputs=inputs: probabilities(fp32_session, inputs))
        for name, inputs in sets.items()
    }
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    fp32_one = ort.InferenceSession(str(version.model_path), options, providers=["CPUExecutionProvider"])
    batch = np.ascontiguousarray(test[:8])
    cpu = cpu_report()
    print(f"CPU: {cpu['model']}; int8 kernels: {cpu['int8_kernels']}; {sum(len(s) for s in sets.values()):,} inputs per path", flush=True)
    chosen = [n.strip() for n in args.only.split(";") if n.strip()] or list(RECIPES)
    rows = []
    for name in chosen:
        recipe, u8u8 = RECIPES[name]
        path = own / "variants" / (re.sub(r"[^a-z0-9]+", "_", repr(recipe).lower()).strip("_")[7:] + ".onnx")
        stamp = path.with_suffix(".json")
        done = own / "results" / f"{path.stem}{'_u8u8' if u8u8 else ''}_{step}.json"  # a row measured before: resumable
        started = time.monotonic()
        if not path.exists() or not stamp.exists() or json.loads(stamp.read_text()) != json.loads(json.dumps(asdict(recipe))):
            quantize_int8(version.model_path, path, train, recipe)
            stamp.write_text(json.dumps(asdict(recipe)))
            done.unlink(missing_ok=True)
        if not done.exists() or args.fresh:
            kernels = summarise(evaluate(path, fp32, sets, labels, reference=False, u8u8=u8u8))
            exact = summarise(evaluate(path, fp32, sets, labels, reference=True))
            one = int8_session(path, threads=1, u8u8=u8u8)
            rates = [(speed(one, batch, args.seconds), speed(fp32_one, batch, args.seconds)) for _ in range(2)]
            done.parent.mkdir(exist_ok=True)
            done.write_text(json.dumps([kernels, exact, max(r[0] for r in rates), max(r[1] for r in rates)]))
        kernels, exact, int8_rate, fp32_rate = json.loads(done.read_text())
        rows.append((name, kernels, exact, int8_rate, fp32_rate, path.stat().st_size))
        print(f"  {name}: {time.monotonic() - started:.0f} s", flush=True)
        print(table(rows[-1:], cpu, step, header=False), flush=True)
    text = table(rows, cpu, step)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stem, flag = ("int8_sweep", "") if args.version == 1 else (f"int8_sweep_v{args.version}", f" --version {args.version}")
    (RESULTS / f"{stem}.md").write_text(
        f"# INT8 recipes for image_classifier v{args.version}'s network\n\n`nice -n 10 python -m experiments.int8_sweep{flag}`\n\n"
        + text
        + "\n"
    )


def table(rows: list[tuple], cpu: dict, step: int, header: bool = True) -> str:
    def cells(s: dict[str, float]) -> str:
        return (
            f"{s['test_agreement']:.1%} | {s['test_max_diff']:.3f} | {s['accuracy']:.3f} | "
            f"{s['shift_agreement']:.1%} ({s['worst_shift_agreement']:.1%}) | {s['shift_max_diff']:.3f}"
        )

    lines = []
    if header:
        lines += [
            f"CPU {cpu['model']}, int8 kernels: {cpu['int8_kernels']}; onnxruntime {ort.__version__}. fp32 test accuracy "
            f"{rows[0][1]['accuracy_fp32']:.3f}. Test: 1,000 photos; shifts: every {step}th test photo under each of 12 shifts "
            "(pooled agreement, worst shift in brackets). Speed: batch 8, one thread, best of 2, INT8 and fp32 alternating; rows were "
            "measured at different times on a shared machine, so compare each row's INT8/fp32 ratio, not rows.",
            "",
            "| recipe | this CPU: test same label | max \\|p diff\\| | accuracy | shifts same label (worst) | max \\|p diff\\| "
            "| reference (VNNI/AMX): test same label | max \\|p diff\\| | accuracy | shifts same label (worst) | max \\|p diff\\| "
            "| img/s INT8 (fp32) | MB |",
            "|---|" + "---:|" * 12,
        ]
    for name, kernels, exact, int8_rate, fp32_rate, size in rows:
        lines.append(f"| {name} | {cells(kernels)} | {cells(exact)} | {int8_rate:.0f} ({fp32_rate:.0f}) | {size / 1e6:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

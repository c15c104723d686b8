"""The export's own INT8 check of a recipe, on every test photo and every shifted one, without publishing anything.

    nice -n 10 python -m experiments.int8_export_check --version 4 "u8s8 reduce_range, first conv fp32" [...]

experiments/int8_sweep.py compares recipes on 250 shifted photos per shift; the export
(`training.quantize.int8_variant`, what `python -m training image_classifier` and
`python -m training quantize` run) checks the chosen recipe on all 1,000 test photos under each
of the 12 shifts. This runs that same function with any recipe of the sweep, on the version's
model.onnx copied into a scratch folder (models/ is not touched), calibrated on the training
photos as the export is (seed 0). The decoded photos come from the sweep's cache (run the sweep
for that version first). Prints each kernel path's numbers and whether the export would write it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from experiments.int8_sweep import CACHE, MODEL, RECIPES
from service.core.registry import Registry
from training.quantize import int8_variant
from training.shifts import SHIFTS

SCRATCH = Path("/tmp/int8-export-check")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", type=int, required=True)
    parser.add_argument("recipes", nargs="+", choices=list(RECIPES))
    args = parser.parse_args()
    version = Registry("models").get(MODEL, args.version)
    if json.loads((CACHE / "spec.json").read_text()) != version.verify()["preprocessing"]:
        raise SystemExit(f"{CACHE} holds photos decoded for another preprocessing: run experiments.int8_sweep --version {args.version}")
    train, test, labels = np.load(CACHE / "train.npy"), np.load(CACHE / "test.npy"), np.load(CACHE / "test_labels.npy")
    shifted = {s: np.load(CACHE / f"shift_{s}.npy") for s in SHIFTS}
    print(f"{len(train)} training photos to calibrate on, {len(test)} test, {sum(len(v) for v in shifted.values())} shifted", flush=True)
    for name in args.recipes:
        recipe, u8u8 = RECIPES[name]
        if u8u8:
            raise SystemExit(f"{name}: a session option, not a file the export makes")
        started = time.monotonic()
        folder = SCRATCH / f"v{args.version}" / "".join(c if c.isalnum() else "_" for c in name)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(version.model_path, folder / "model.onnx")
        variant = int8_variant(folder / "model.onnx", train, test, labels, shifted, recipe)
        (folder / "variant.json").write_text(json.dumps(variant, indent=1, default=str))
        check = variant["check"]
        for path, r in check["paths"].items():
            worst = r["shifts"]["worst_shift"]
            print(
                f"{name} [{path}]: test same label {r['test']['label_agreement']:.4f}, accuracy {r['test']['accuracy_int8']:.4f} "
                f"(fp32 {r['test']['accuracy_fp32']:.4f}), shifted same label {r['shifts']['label_agreement']:.4f} "
                f"(worst {worst} {r['shifts']['by_shift'][worst]:.3f})",
                flush=True,
            )
        print(f"{name}: passed={check['passed']}, written={variant['written']}, {time.monotonic() - started:.0f} s ({folder})", flush=True)


if __name__ == "__main__":
    main()

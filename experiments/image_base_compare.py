"""Image model choice (issue 27) on the 1,000 validation photos only: the test split is never read.

Two kinds of candidate, scored the same way: accuracy on the 1,000 validation photos, and
the mean accuracy over the twelve synthetic shifts of training/shifts.py on a fixed quarter
of them (125 cats + 125 dogs; `--all` in `onnx` uses all 1,000).

- Heads on cached frozen-base features (cheap): each base's pooled features are computed
  once (ONNX Runtime, the exported frozen base) for the training photos, one randomly
  changed copy of each (training/photo_augment.py), the validation photos and their shifts;
  heads then train in seconds (mean of 3 seeds).
- Full runs (expensive; a few only): the trainer's own two phases (training.image_classifier)
  on train, validated on validation, exported to ONNX and scored like the heads.

    nice -n 10 python -m experiments.image_base_compare features mobilenet 224
    nice -n 10 python -m experiments.image_base_compare features efficientnet_lite0 224
    nice -n 10 python -m experiments.image_base_compare features efficientnet_lite2 260
    nice -n 10 python -m experiments.image_base_compare heads [--features efficientnet_lite2_260] [--only NAME]
    nice -n 10 python -m experiments.image_base_compare finetune NAME -- --base efficientnet_lite0 ...  (trainer options)
    nice -n 10 python -m experiments.image_base_compare onnx models/image_classifier/2/model.onnx v2 [--all]
    python -m experiments.image_base_compare cost efficientnet_lite0:224 efficientnet_lite2:260 v3=models/image_classifier/3/model.onnx
    python -m experiments.image_base_compare table

`cost` gives each candidate's model file size and its bare session's img/s (fp32 or INT8 file) at batch 1
and 8 (as benchmarks/image_models.py measures versions), in alternating rounds.

Features and decoded shifts are cached under $IMAGE_COMPARE_CACHE (default /tmp/image_compare);
results accumulate in experiments/results/image_base_compare.json, which `table` prints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.core.preprocessing import ImageSpec, decode_image
from training.photo_augment import augmented_copies
from training.shifts import SHIFTS, shifted_inputs

DATA = Path("../shared/data/cats_vs_dogs_small")
PRETRAINED = Path("../shared/data/pretrained")
WEIGHTS = {
    "mobilenet": PRETRAINED / "mobilenet_0.75_224_imagenet_notop.weights.h5",
    "efficientnet_lite0": PRETRAINED / "efficientnet_lite0_imagenet_notop.weights.h5",
    "efficientnet_lite2": PRETRAINED / "efficientnet_lite2_imagenet_notop.weights.h5",
}
CACHE = Path(os.environ.get("IMAGE_COMPARE_CACHE", "/tmp/image_compare"))
RESULTS = Path(__file__).parent / "results" / "image_base_compare.json"
CLASSES = ("cats", "dogs")
AUGMENT_SEED = 1000
_START = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _START:7.1f}s] {message}", flush=True)


def split_paths(split: str) -> tuple[list[Path], np.ndarray]:
    """Photos of one split folder (train or validation only), sorted, and their labels."""
    assert split in ("train", "validation"), "model choice never reads the test split"
    paths, labels = [], []
    for label, name in enumerate(CLASSES):
        found = sorted((DATA / split / name).iterdir())
        paths += found
        labels += [label] * len(found)
    return paths, np.asarray(labels)


def shift_subset(labels: np.ndarray, everything: bool) -> np.ndarray:
    """Indices of the validation photos the shifts are measured on: every fourth photo (125 per class), or all."""
    return np.arange(len(labels)) if everything else np.arange(0, len(labels), 4)


def cached(name: str, make: Any) -> np.ndarray:
    path = CACHE / f"{name}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    array = make()
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(partial, array)
    partial.replace(path)  # whole or absent: two runs may share the cache
    return array


SET_NAMES = ("train", "train_aug", "validation", *SHIFTS)


def decoded(size: int, name: str, everything: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images, labels) of one set: train, train_aug, validation or a shift, decoded as the service does (cached)."""
    spec = ImageSpec(size, size)
    if name in ("train", "train_aug"):
        paths, labels = split_paths("train")
    else:
        paths, labels = split_paths("validation")
    if name == "train_aug":
        return cached(f"px_train_aug_{size}", lambda: augmented_copies(paths, spec, AUGMENT_SEED)), labels
    if name in ("train", "validation"):
        return cached(f"px_{name}_{size}", lambda: np.stack([decode_image(p.read_bytes(), spec) for p in paths])), labels
    subset = shift_subset(labels, everything)
    tag = "all" if everything else "quarter"
    return cached(f"px_{name}_{tag}_{size}", lambda: shifted_inputs([paths[i] for i in subset], spec, name)), labels[subset]


def decoded_sets(size: int, names: tuple[str, ...], everything: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {name: decoded(size, name, everything) for name in names}


def run_onnx(path: Path, images: np.ndarray, batch: int = 32) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: np.ascontiguousarray(images[i : i + batch])})[0] for i in range(0, len(images), batch)])


def frozen_feature_model(base_name: str, size: int) -> Path:
    """The pretrained base + global average pooling, uint8 in, exported to ONNX (cached)."""
    path = CACHE / f"base_{base_name}_{size}.onnx"
    if path.exists():
        return path
    import keras

    from training.export import TensorSpec, export_onnx
    from training.kinds.image import _bases

    constructor, scale = _bases()[base_name]
    kwargs: dict[str, Any] = {"include_top": False, "weights": str(WEIGHTS[base_name]), "input_shape": (size, size, 3)}
    if base_name == "mobilenet":
        kwargs["alpha"] = 0.75
    base = constructor(**kwargs)
    pixels = keras.Input((size, size, 3), dtype="uint8", name="image")
    pooled = keras.layers.GlobalAveragePooling2D()(base(scale(keras.ops.cast(pixels, "float32")), training=False))
    CACHE.mkdir(parents=True, exist_ok=True)
    export_onnx(keras.Model(pixels, pooled), TensorSpec("image", "uint8", (None, size, size, 3)), "features", path)
    return path


def command_features(base_name: str, size: int, sets: list[str] | None) -> None:
    model = frozen_feature_model(base_name, size)
    for name in SET_NAMES:
        if sets and name not in sets:
            continue
        started = time.monotonic()
        pixels, _ = decoded(size, name)
        cached(f"ft_{base_name}_{size}_{name}", lambda pixels=pixels: run_onnx(model, pixels))
        log(f"{base_name} {size}: features of {name} ({len(pixels)}) in {time.monotonic() - started:.0f}s")


def load_results() -> list[dict[str, Any]]:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else []


def save_result(row: dict[str, Any]) -> None:
    rows = [r for r in load_results() if r["candidate"] != row["candidate"]] + [row]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=1) + "\n")
    log(f"{row['candidate']}: validation {row['validation']:.4f}, shift mean {row['shift_mean']:.4f}")


def score(predict: Any, sets: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Validation accuracy and the accuracy under each shift; `predict(name, inputs)` gives class probabilities."""
    accuracy = {name: float((predict(name, x).argmax(axis=1) == y).mean()) for name, (x, y) in sets.items()}
    shifts = {s: accuracy[s] for s in SHIFTS}
    return {"validation": accuracy["validation"], "shift_mean": float(np.mean(list(shifts.values()))), "shifts": shifts}


# Heads on frozen features: (name, hidden units, dropout, label smoothing, train on the photo copies too, epochs).
# The linear ones are what `--phase1 features` trains (Dropout + Dense, Adam 1e-3, batch 32).
HEADS = (
    ("linear (trainer's phase 1)", 0, 0.2, 0.0, False, 6),
    ("linear + photo copies", 0, 0.2, 0.0, True, 6),
    ("linear, dropout 0.5, smoothing 0.1 + photo copies", 0, 0.5, 0.1, True, 6),
    ("hidden 256 + photo copies", 256, 0.5, 0.0, True, 6),
    ("linear + photo copies, 20 epochs", 0, 0.2, 0.0, True, 20),
    ("linear, dropout 0.5 + photo copies, 20 epochs", 0, 0.5, 0.0, True, 20),
    ("linear, 20 epochs", 0, 0.2, 0.0, False, 20),
)


def train_head(x: np.ndarray, y: np.ndarray, hidden: int, dropout: float, smoothing: float, epochs: int, seed: int) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    layers: list[Any] = [keras.Input((x.shape[1],))]
    if hidden:
        layers += [keras.layers.Dense(hidden, activation="relu")]
    layers += [keras.layers.Dropout(dropout), keras.layers.Dense(2, activation="softmax")]
    head = keras.Sequential(layers)
    head.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.CategoricalCrossentropy(label_smoothing=smoothing))
    head.fit(x, keras.utils.to_categorical(y, 2), epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    return head


def command_heads(only: str | None, features: list[str] | None) -> None:
    for path in sorted(CACHE.glob("ft_*_validation.npy")):
        base_name, size = path.name.removeprefix("ft_").removesuffix("_validation.npy").rsplit("_", 1)
        if features and f"{base_name}_{size}" not in features:
            continue
        feats = {
            p.name.removeprefix(f"ft_{base_name}_{size}_").removesuffix(".npy"): np.load(p)
            for p in CACHE.glob(f"ft_{base_name}_{size}_*.npy")
        }
        _, train_labels = split_paths("train")
        _, val_labels = split_paths("validation")
        subset = shift_subset(val_labels, False)
        have_shifts = all(s in feats for s in SHIFTS)
        sets = {"validation": (feats["validation"], val_labels)} | {s: (feats[s], val_labels[subset]) for s in SHIFTS if have_shifts}
        for name, hidden, dropout, smoothing, with_copies, epochs in HEADS:
            if (with_copies and "train_aug" not in feats) or (only and only not in name):
                continue
            x = np.concatenate([feats["train"], feats["train_aug"]]) if with_copies else feats["train"]
            y = np.concatenate([train_labels, train_labels]) if with_copies else train_labels
            runs = []
            for seed in range(3):
                head = train_head(x, y, hidden, dropout, smoothing, epochs, seed)
                runs.append(
                    score(lambda _, inputs, head=head: head.predict(inputs, batch_size=1024, verbose=0), sets) if have_shifts else None
                )
                if not have_shifts:
                    runs[-1] = {"validation": float((head.predict(feats["validation"], verbose=0).argmax(1) == val_labels).mean())}
            row: dict[str, Any] = {
                "candidate": f"{base_name} {size}px frozen, {name}",
                "kind": "frozen features, mean of 3 seeds",
                "validation": float(np.mean([r["validation"] for r in runs])),
                "validation_runs": [r["validation"] for r in runs],
                "shift_mean": float(np.mean([r["shift_mean"] for r in runs])) if have_shifts else float("nan"),
            }
            if have_shifts:
                row["shifts"] = {s: float(np.mean([r["shifts"][s] for r in runs])) for s in SHIFTS}
            save_result(row)


def command_onnx(path: Path, label: str, everything: bool, seconds: float | None = None, extra: dict[str, Any] | None = None) -> None:
    import onnx

    graph = onnx.load(str(path))
    size = graph.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    sets = decoded_sets(size, ("validation", *SHIFTS), everything)
    row = {"candidate": label, "kind": "full model (ONNX)", "file_bytes": path.stat().st_size} | score(lambda _, x: run_onnx(path, x), sets)
    if everything:
        row["candidate"] += " [shifts on all 1,000]"
    if seconds is not None:
        row["train_seconds"] = round(seconds)
    save_result(row | (extra or {}))


def epoch_clock() -> Any:
    """A Keras callback that logs and keeps each epoch's seconds (its validation included)."""
    import keras

    class EpochClock(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self._started = 0.0

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._started = time.monotonic()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.seconds.append(time.monotonic() - self._started)
            log(f"epoch {epoch + 1}: {self.seconds[-1]:.0f}s, val_accuracy {(logs or {}).get('val_accuracy', float('nan')):.4f}")

    return EpochClock()


def trainer_namespace(trainer_args: list[str]) -> argparse.Namespace:
    """The image kind's options (training/kinds/image.py) parsed as its trainer parses them; no data folder is read."""
    from training.kinds.image import add_arguments, default_image_size

    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    add_arguments(parser)
    args = parser.parse_args(["--data", "unused", *trainer_args])
    args.name = "base-compare"  # the Keras models' name
    args.image_size = args.image_size or default_image_size(args.base)
    return args


def command_finetune(name: str, trainer_args: list[str]) -> None:
    """The trainer's models and two phases on train (+ photo copies), validated on validation; no test split.

    With `--phase1 features` and at most one photo copy, phase 1 trains the trainer's top as the
    trainer does (Adam at --learning-rate, --epochs, --batch-size, shuffled) but on the cached ONNX
    features of the same frozen base (`features` command: train, train_aug, validation) rather than
    running the base again in Keras; the photo copy is then the cached one (seed AUGMENT_SEED), the
    images those features came from. Phase 2 is the trainer's own: the top --fine-tune-layers of
    the base unfrozen but BatchNorm, its in-graph augmentation, Adam at --fine-tune-learning-rate.
    Each phase-2 epoch's seconds are logged and kept.
    """
    import keras

    from training.export import TensorSpec, export_onnx
    from training.kinds import image as trainer

    args = trainer_namespace(trainer_args)
    size = args.image_size
    keras.utils.set_random_seed(args.seed)
    started = time.monotonic()
    (train_px, train_labels), (val_px, val_labels) = decoded(size, "train"), decoded(size, "validation")
    train_paths, _ = split_paths("train")
    copies = [np.asarray(decoded(size, "train_aug")[0])][: args.photo_copies]
    copies += [augmented_copies(train_paths, ImageSpec(size, size), AUGMENT_SEED + c) for c in range(1, args.photo_copies)]
    x, y = np.concatenate([np.asarray(train_px), *copies]), np.concatenate([train_labels] * (1 + len(copies)))
    validation = (np.asarray(val_px), val_labels)
    models = trainer.build_models(args, 2)
    feature_files = [CACHE / f"ft_{args.base}_{size}_{n}.npy" for n in ("train", "train_aug")[: 1 + args.photo_copies]]
    feature_files.append(CACHE / f"ft_{args.base}_{size}_validation.npy")
    clock = epoch_clock()
    if args.phase1 == "features" and args.photo_copies <= 1 and all(f.exists() for f in feature_files):
        *train_features, val_features = (np.load(f) for f in feature_files)
        log(f"phase 1: the top on cached features of {args.base} {size}px, {args.epochs} epochs")
        trainer._compile(models.top, args.learning_rate)
        fitted = models.top.fit(
            np.concatenate(train_features),
            y,
            validation_data=(val_features, val_labels),
            epochs=args.epochs,
            batch_size=args.batch_size,
            shuffle=True,
            verbose=0,
        )
        history = fitted.history
        log(f"phase 1: val_accuracy {history['val_accuracy'][-1]:.4f}")
        layers = 0
        phase2_started = time.monotonic()
        if args.fine_tune_epochs > 0:
            layers = trainer._unfreeze_top(models.base, args.fine_tune_layers)
            trainer._compile(models.training, args.fine_tune_learning_rate)
            log(f"phase 2: top {args.fine_tune_layers} base layers ({layers} with weights) at lr {args.fine_tune_learning_rate}")
            more = models.training.fit(
                trainer._dataset(x, y, args.batch_size, True, args.seed),
                validation_data=trainer._dataset(*validation, args.batch_size, False, args.seed),
                epochs=args.fine_tune_epochs,
                verbose=2,
                callbacks=[clock],
            ).history
            history = {key: history[key] + more[key] for key in history}
        phase2_seconds = time.monotonic() - phase2_started
    else:
        history, layers = trainer.fit_two_phases(args, models, (x, y), validation)
        phase2_seconds = float("nan")
    seconds = time.monotonic() - started
    path = CACHE / f"finetune_{name.replace(' ', '_').replace('/', '_')}.onnx"
    export_onnx(models.inference, TensorSpec("image", "uint8", (None, size, size, 3)), "probabilities", path)
    extra_info = {
        "trainer_args": trainer_args,
        "val_accuracy_per_epoch": [round(v, 4) for v in history["val_accuracy"]],
        "layers_with_weights": layers,
        "phase2_seconds": None if np.isnan(phase2_seconds) else round(phase2_seconds),
        "phase2_epoch_seconds": [round(v) for v in clock.seconds],
        "onnx": str(path),
    }
    command_onnx(path, name, everything=False, seconds=seconds, extra=extra_info)


def full_model(base_name: str, size: int) -> Path:
    """The trainer's inference model (uint8 pixels -> probabilities) of a base, head untrained, exported to ONNX (cached).

    A file's size and a session's cost do not depend on the head's weights.
    """
    path = CACHE / f"full_{base_name}_{size}.onnx"
    if path.exists():
        return path
    from training.export import TensorSpec, export_onnx
    from training.kinds.image import build_models

    args = trainer_namespace(["--base", base_name, "--weights", str(WEIGHTS[base_name]), "--image-size", str(size)])
    if base_name == "mobilenet":
        args.alpha = 0.75
    models = build_models(args, 2)
    export_onnx(models.inference, TensorSpec("image", "uint8", (None, size, size, 3)), "probabilities", path)
    return path


COST_BATCHES = (1, 8)


def command_cost(items: list[str], rounds: int, seconds: float) -> None:
    """File size and the bare session's img/s at batch 1 and 8 of each candidate, in alternating rounds (median).

    An item is BASE:SIZE (the trainer's model of that base, `full_model`) or LABEL=FILE.onnx.
    Sessions are opened as benchmarks/image_models.py opens them (the service's options, every
    core); the photos are validation photos decoded at each model's size. The cost per image is
    against the first item.
    """
    import onnx

    from benchmarks.int8 import images_per_second
    from service.core.sessions import SessionConfig, open_session

    files: dict[str, Path] = {}
    for item in items:
        if "=" in item:
            label, file = item.split("=", 1)
            files[label] = Path(file)
        else:
            base_name, size = item.split(":")
            files[f"{base_name} {size}px"] = full_model(base_name, int(size))
    threads, load_before = len(os.sched_getaffinity(0)), os.getloadavg()[0]
    sessions = {
        label: open_session(path, SessionConfig(("CPUExecutionProvider",)), "", threads, spin=True) for label, path in files.items()
    }
    photos = {}
    for label, path in files.items():
        size = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[1].dim_value
        photos[label] = np.asarray(decoded(size, "validation")[0][:16])
    samples: dict[tuple[str, int], list[float]] = {}
    for round_ in range(rounds):
        for batch in COST_BATCHES:
            for label in list(files) if round_ % 2 == 0 else reversed(list(files)):
                inputs = np.ascontiguousarray(photos[label][np.arange(batch) % 16])
                samples.setdefault((label, batch), []).append(images_per_second(sessions[label], inputs, seconds))
    rates = {key: float(np.median(values)) for key, values in samples.items()}
    note = f"{rounds} alternating rounds of {seconds:g}s, {threads} cores, load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    first = next(iter(files))
    for label, path in files.items():
        row = {
            "candidate": label,
            "kind": "serving cost (bare session)",
            "file_bytes": path.stat().st_size,
            **{f"img_per_s_batch{b}": round(rates[(label, b)], 1) for b in COST_BATCHES},
            **{f"cost_per_image_vs_first_batch{b}": round(rates[(first, b)] / rates[(label, b)], 2) for b in COST_BATCHES},
            "first": first,
            "measured": note,
        }
        rows = [r for r in load_results() if r["candidate"] != label or r["kind"] != row["kind"]] + [row]
        RESULTS.write_text(json.dumps(rows, indent=1) + "\n")
        log(f"{label}: {row['file_bytes'] / 1e6:.1f} MB, " + ", ".join(f"batch {b} {rates[(label, b)]:.1f} img/s" for b in COST_BATCHES))


def command_table() -> None:
    rows = load_results()
    print("| candidate | kind | validation (1,000) | shift mean (12 x 250) | weakest shifts | train time |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        if "validation" not in row:
            continue
        shifts = row.get("shifts") or {}
        weakest = ", ".join(f"{k} {v:.3f}" for k, v in sorted(shifts.items(), key=lambda kv: kv[1])[:2])
        seconds = f"{row['train_seconds'] / 60:.0f} min" if "train_seconds" in row else ""
        print(f"| {row['candidate']} | {row['kind']} | {row['validation']:.4f} | {row['shift_mean']:.4f} | {weakest} | {seconds} |")
    costs = [row for row in rows if row["kind"].startswith("serving cost")]
    if costs:
        print()
        print(f"| model file | MB | img/s batch 1 | img/s batch 8 | cost per image vs {costs[0]['first']}, batch 1 | batch 8 |")
        print("|---|---:|---:|---:|---:|---:|")
        for row in costs:
            print(
                f"| {row['candidate']} | {row['file_bytes'] / 1e6:.1f} | {row['img_per_s_batch1']:.1f} | {row['img_per_s_batch8']:.1f} | "
                f"{row['cost_per_image_vs_first_batch1']:.2f}x | {row['cost_per_image_vs_first_batch8']:.2f}x |"
            )
        print(f"\n({costs[0]['measured']})")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    features = commands.add_parser("features")
    features.add_argument("base", choices=list(WEIGHTS))
    features.add_argument("size", type=int)
    features.add_argument("--sets", nargs="*", help="only these sets (train, train_aug, validation, a shift name)")
    heads = commands.add_parser("heads")
    heads.add_argument("--only", help="only the heads whose name contains this")
    heads.add_argument("--features", nargs="*", help="only these cached bases, e.g. efficientnet_lite2_260")
    finetune = commands.add_parser("finetune")
    finetune.add_argument("name")
    finetune.add_argument("trainer_args", nargs=argparse.REMAINDER)
    onnx_cmd = commands.add_parser("onnx")
    onnx_cmd.add_argument("path", type=Path)
    onnx_cmd.add_argument("label")
    onnx_cmd.add_argument("--all", action="store_true", help="shifts on all 1,000 validation photos")
    cost = commands.add_parser("cost")
    cost.add_argument("items", nargs="+", help="BASE:SIZE (the trainer's model, e.g. efficientnet_lite0:224) or LABEL=FILE.onnx")
    cost.add_argument("--rounds", type=int, default=3)
    cost.add_argument("--seconds", type=float, default=3.0)
    commands.add_parser("table")
    args = parser.parse_args(argv)
    if args.command == "features":
        command_features(args.base, args.size, args.sets)
    elif args.command == "heads":
        command_heads(args.only, args.features)
    elif args.command == "finetune":
        command_finetune(args.name, [a for a in args.trainer_args if a != "--"])
    elif args.command == "onnx":
        command_onnx(args.path, args.label, args.all)
    elif args.command == "cost":
        command_cost(args.items, args.rounds, args.seconds)
    else:
        command_table()


if __name__ == "__main__":
    main(sys.argv[1:])

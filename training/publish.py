"""Turn a trained Keras model into a new, immutable registry version.

Export and parity happen inside the registry's staging directory: if either fails,
the staging directory is removed and the registry is as it was. Publishing never
touches CURRENT; promotion is a separate command.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import keras
import numpy as np

from service.core.registry import METADATA_FILE, METADATA_SCHEMA_VERSION, MODEL_FILE, ModelVersion, Registry, sha256_file
from training.export import (
    OPSET,
    PARITY_TOLERANCE,
    SPARSE_PARITY_TOLERANCE,
    TensorSpec,
    check_parity,
    export_onnx,
    sparse_feed,
    sparse_specs,
)
from training.plots import plot_confusion_matrix, plot_history
from training.profile import write_profile

MAX_MODEL_BYTES = 20 * 1024 * 1024
LIBRARIES = (
    "tensorflow-cpu",
    "tensorflow",
    "keras",
    "tf2onnx",
    "onnx",
    "onnxruntime-gpu",
    "onnxruntime",
    "numpy",
    "pillow",
    "scikit-learn",
)


@dataclass
class TrainingResult:
    """Everything a trainer hands over to be exported and recorded."""

    name: str
    task: str
    model: keras.Model  # the inference model (no augmentation layers)
    input_spec: TensorSpec
    output_name: str
    labels: list[str]
    preprocessing: dict[str, Any]  # the metadata block load_preprocessor() reads
    assets: dict[str, Any]  # file name -> JSON document (vocab.json, scaler.json)
    metrics: dict[str, Any]
    history: dict[str, list[float]]
    history_metric: str
    parity_inputs: np.ndarray
    data: dict[str, Any]
    architecture: dict[str, Any]
    training: dict[str, Any]
    # The held-out test set in raw form (texts, uint8 images, raw feature rows) and its
    # targets (label names or prices): redeploy scores the served version on it too.
    test_items: list[Any] = field(default_factory=list)
    test_targets: list[Any] = field(default_factory=list)
    confusion_matrix: np.ndarray | None = None
    phase_boundaries: list[int] = field(default_factory=list)
    extra_plots: dict[str, Callable[[Path], Path]] = field(default_factory=dict)  # file name -> writer
    # Training inputs to calibrate an INT8 variant on (training/quantize.py); None: no INT8 variant.
    calibration_inputs: np.ndarray | None = None
    # The test inputs under the synthetic shifts (training/shifts.py), which the INT8 check covers too.
    int8_shifted: dict[str, np.ndarray] | None = None
    # Export a bag-of-n-grams model with sparse input (n-gram ids and weights; training/sparse_input.py).
    sparse_input: bool = False
    # The training split's inputs as the task's `check` takes them (texts, feature rows as lists, image paths):
    # with the test items, the reference profile that drift is measured against (training/profile.py).
    profile_inputs: list[Any] = field(default_factory=list)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        with contextlib.suppress(importlib_metadata.PackageNotFoundError):
            versions[name] = importlib_metadata.version(name)
    return versions


def write_assets(result: TrainingResult, staging: Path) -> dict[str, str]:
    """The preprocessing assets (vocab.json, scaler.json); returns file name -> sha256."""
    assets = {}
    for file_name, document in result.assets.items():
        (staging / file_name).write_text(json.dumps(document) + "\n")
        assets[file_name] = sha256_file(staging / file_name)
    return assets


def write_plots(result: TrainingResult, staging: Path) -> list[str]:
    """Training curves, the confusion matrix and the trainer's own plots, as PNG files; returns their names."""
    title = f"{result.name}: training curves"
    plots = [plot_history(result.history, result.history_metric, staging / "history.png", title, result.phase_boundaries).name]
    if result.confusion_matrix is not None:
        matrix = plot_confusion_matrix(result.confusion_matrix, result.labels, staging / "confusion_matrix.png", f"{result.name}: test set")
        plots.append(matrix.name)
    plots += [writer(staging / file_name).name for file_name, writer in result.extra_plots.items()]
    return plots


def write_variants(result: TrainingResult, model_path: Path) -> dict[str, Any]:
    """The INT8 variant beside model.onnx when the trainer gave calibration inputs; its metadata block (or none)."""
    if result.calibration_inputs is None:
        return {}
    from training.quantize import int8_variant

    labels = np.array([result.labels.index(t) for t in result.test_targets])
    return {"int8": int8_variant(model_path, result.calibration_inputs, np.stack(result.test_items), labels, result.int8_shifted)}


def publish(result: TrainingResult, registry: Registry) -> ModelVersion:
    """Export, check parity, write assets, plots and metadata; return the new version."""
    with registry.new_version(result.name) as staged:
        version, staging = staged.version, staged.path
        print(f"[export] {result.name}: Keras -> ONNX (opset {OPSET})", flush=True)
        model_path = staging / MODEL_FILE
        sparse = result.sparse_input
        outputs = export_onnx(result.model, result.input_spec, result.output_name, model_path, sparse=sparse)
        inputs = sparse_specs() if sparse else [result.input_spec]
        size = model_path.stat().st_size
        if size > MAX_MODEL_BYTES:
            print(f"[export] warning: model.onnx is {size / 1e6:.1f} MB, over the {MAX_MODEL_BYTES / 1e6:.0f} MB budget", flush=True)
        if sparse:
            print(
                f"[export] sparse input: {', '.join(f'{i.name} {i.dtype} [N, K]' for i in inputs)}; the first Dense is a gather-sum",
                flush=True,
            )
        tolerance = SPARSE_PARITY_TOLERANCE if sparse else PARITY_TOLERANCE
        parity = check_parity(result.model, model_path, result.parity_inputs, tolerance, feed=sparse_feed if sparse else None)
        print(
            f"[parity] max |keras - onnx| = {parity['max_abs_diff']:.2e} on {parity['samples']} test inputs (<= {parity['tolerance']:g})",
            flush=True,
        )

        variants = write_variants(result, model_path)
        assets, plots = write_assets(result, staging), write_plots(result, staging)
        metadata = {
            "schema_version": METADATA_SCHEMA_VERSION,
            "name": result.name,
            "version": version,
            "task": result.task,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "model_file": MODEL_FILE,
            "sha256": sha256_file(model_path),
            "model_bytes": size,
            "onnx_opset": OPSET,
            "inputs": [spec.to_json() for spec in inputs],
            "outputs": [o.to_json() for o in outputs],
            "labels": result.labels,
            "preprocessing": result.preprocessing,
            "metrics": result.metrics,
            "parity": parity,
            "data": result.data,
            "library_versions": library_versions(),
            "architecture": result.architecture,
            "training": result.training | {"history": result.history},
            "assets": assets,
            "plots": plots,
        } | ({"variants": variants} if variants else {})
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        if result.profile_inputs:
            metadata["profile"] = write_profile(ModelVersion(result.name, version, staging), result.profile_inputs, result.test_items)
            (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    assert staged.published is not None
    staged.published.verify()
    return staged.published

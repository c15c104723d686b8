"""INT8 variants for the CPU: static QDQ quantization calibrated on training inputs, checked against fp32.

A variant is made by onnxruntime's own tools (`quant_pre_process`, `quantize_static`) and is
stored beside model.onnx in the same registry version only when it passes its check on the
held-out test inputs: accuracy at most 0.5 points below fp32 and the same label on at least
99% of them. A variant that fails is deleted and the refusal is recorded in metadata. The
runtime then picks the file by provider (service/core/runtime.choose_model_file).

`python -m training quantize MODEL [VERSION]` adds a variant to an existing version without
training again: the version is copied into a new version with the variant beside it (a
published version is never modified).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from service.core.registry import INT8_FILE, METADATA_FILE, ModelVersion, Registry, sha256_file

MAX_ACCURACY_DROP = 0.005  # 0.5 points of accuracy below fp32 on the test split
MIN_AGREEMENT = 0.99  # the same label as fp32 on >= 99% of the test inputs
CALIBRATION_SAMPLES = 256
CALIBRATION_BATCH = 16
# Softmax stays float; everything that carries the convolutions' work is quantized.
INT8_OPS = ("Conv", "MatMul", "Gemm", "Add", "Mul", "GlobalAveragePool", "AveragePool", "Clip", "Relu")


class _CalibrationBatches:
    """onnxruntime's CalibrationDataReader protocol over an input array."""

    def __init__(self, input_name: str, inputs: np.ndarray) -> None:
        self._batches = iter([{input_name: inputs[i : i + CALIBRATION_BATCH]} for i in range(0, len(inputs), CALIBRATION_BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: np.ndarray, seed: int = 0, method: str = "MinMax") -> dict[str, Any]:
    """Static INT8 in QDQ form (uint8 activations, per-channel int8 weights), calibrated on a sample of `calibration`.

    U8S8 is what onnxruntime runs fastest on x86 CPUs with VNNI; per-channel weights keep
    the depthwise convolutions of MobileNets accurate.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    rows = np.sort(np.random.RandomState(seed).choice(len(calibration), size=min(len(calibration), CALIBRATION_SAMPLES), replace=False))
    prepared = int8_path.with_name(int8_path.name + ".pre.onnx")
    try:
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)  # static image shapes: ONNX inference suffices
        input_name = onnx.load(str(prepared)).graph.input[0].name
        quantize_static(
            str(prepared),
            str(int8_path),
            _CalibrationBatches(input_name, calibration[rows]),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod[method],
            op_types_to_quantize=list(INT8_OPS),
        )
    finally:
        prepared.unlink(missing_ok=True)
        for leftover in int8_path.parent.glob("augmented_model*.onnx"):
            leftover.unlink()
    return {
        "format": "QDQ",
        "activations": "uint8",
        "weights": "int8, per channel",
        "calibration": f"{method} over {len(rows)} training inputs (seed {seed})",
        "ops": list(INT8_OPS),
        "tool": f"onnxruntime.quantization.quantize_static (onnxruntime {ort.__version__})",
    }


def predict_labels(path: Path, inputs: np.ndarray, batch_size: int = 32) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {name: inputs[i : i + batch_size]})[0].argmax(axis=1) for i in range(0, len(inputs), batch_size)]
    )


def check_int8(
    fp32_path: Path,
    int8_path: Path,
    inputs: np.ndarray,
    labels: np.ndarray,
    max_drop: float = MAX_ACCURACY_DROP,
    min_agreement: float = MIN_AGREEMENT,
) -> dict[str, Any]:
    """Both files' accuracy on the same held-out inputs and how often their labels agree; `passed` says if INT8 may ship."""
    fp32, int8 = predict_labels(fp32_path, inputs), predict_labels(int8_path, inputs)
    accuracy_fp32, accuracy_int8, agreement = float((fp32 == labels).mean()), float((int8 == labels).mean()), float((fp32 == int8).mean())
    return {
        "samples": len(labels),
        "accuracy_fp32": accuracy_fp32,
        "accuracy_int8": accuracy_int8,
        "label_agreement": agreement,
        "max_accuracy_drop": max_drop,
        "min_label_agreement": min_agreement,
        "passed": accuracy_fp32 - accuracy_int8 <= max_drop and agreement >= min_agreement,
    }


def int8_variant(
    model_path: Path, calibration: np.ndarray, test_inputs: np.ndarray, test_labels: np.ndarray, **limits: float
) -> dict[str, Any]:
    """Quantize beside model.onnx and check it; the metadata block for "variants" -> "int8". A refused variant is deleted."""
    int8_path = model_path.with_name(INT8_FILE)
    print(f"[int8] static QDQ quantization, calibrated on training inputs ({min(len(calibration), CALIBRATION_SAMPLES)})", flush=True)
    recipe = quantize_int8(model_path, int8_path, calibration)
    check = check_int8(model_path, int8_path, test_inputs, test_labels, **limits)
    summary = (
        f"accuracy {check['accuracy_int8']:.4f} vs fp32 {check['accuracy_fp32']:.4f}, same label on {check['label_agreement']:.2%} "
        f"of {check['samples']} test inputs (limits: {check['max_accuracy_drop']:.3f} drop, {check['min_label_agreement']:.0%} agreement)"
    )
    if not check["passed"]:
        int8_path.unlink()
        print(f"[int8] REFUSED, {INT8_FILE} not written: {summary}", flush=True)
        return {"file": None, "written": False, "check": check, "recipe": recipe}
    print(f"[int8] {INT8_FILE} passed: {summary}", flush=True)
    variant = {"file": INT8_FILE, "written": True, "sha256": sha256_file(int8_path), "bytes": int8_path.stat().st_size}
    return variant | {"check": check, "recipe": recipe, "use": "the CPU execution provider; GPUs run model.onnx"}


def add_int8_variant(
    registry: Registry, source: ModelVersion, calibration: np.ndarray, test_inputs: np.ndarray, test_labels: np.ndarray
) -> ModelVersion:
    """A new version: `source`'s files and metadata, plus a checked INT8 variant (or the record of its refusal)."""
    metadata = source.verify()
    with registry.new_version(source.name) as staged:
        for item in source.path.iterdir():
            if item.is_file() and item.name not in (METADATA_FILE, INT8_FILE):
                shutil.copy2(item, staged.path / item.name)
        variant = int8_variant(staged.path / metadata["model_file"], calibration, test_inputs, test_labels)
        metadata |= {"version": staged.version, "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        metadata["variants"] = {"int8": variant}
        metadata["derived_from"] = {
            "version": source.version,
            "sha256": metadata["sha256"],
            "change": "INT8 variant added; model.onnx unchanged",
        }
        (staged.path / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    assert staged.published is not None
    staged.published.verify()
    return staged.published

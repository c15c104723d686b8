"""INT8 variants for the CPU: static QDQ quantization calibrated on training inputs, checked against fp32 on every kernel path.

A variant is made by onnxruntime's own tools (`quant_pre_process`, `quantize_static`) by a
Recipe (types, reduce_range, calibration, nodes kept fp32; RECIPE was chosen by
experiments/int8_sweep.py) and is stored beside model.onnx only when it passes its check on
the held-out test inputs and on the same inputs under the synthetic shifts (training/shifts.py):
accuracy at most 0.5 points below fp32 and the same label on at least 99% of each, on both
kernel paths: this CPU's int8 kernels, and exact int8 arithmetic emulated in float (the int32
sums VNNI and AMX kernels compute; without VNNI, onnxruntime's u8s8 kernels sum products in int16
and can saturate, so the same file can answer differently, see service/core/cpu.py). The
emulation is close to VNNI's answers, not equal: the fused kernels requantize each layer with
their own rounding (the shipped image variant on an AMD EPYC with AVX-512 VNNI: within 0.036 of
the emulation on the 1,000 test photos, one label of 1,000 different). A variant that fails is
deleted and the refusal is recorded in metadata.

A variant that passes is stored with its reference set (service/core/int8_reference.py): a few
test inputs and fp32's probabilities for them, on which every load checks it again on the CPU
that runs it (service/core/runtime.load_model).

`python -m training quantize MODEL [VERSION]` adds a variant to an existing version without
training again: the version is copied into a new version with the variant beside it (a
published version is never modified).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from service.core.cpu import cpu_report
from service.core.int8_reference import Int8Bounds, compare, encode_inputs
from service.core.registry import INT8_FILE, INT8_REFERENCE_FILE, METADATA_FILE, ModelVersion, Registry, sha256_file

MAX_ACCURACY_DROP = 0.005  # 0.5 points of accuracy below fp32 on the test split
MIN_AGREEMENT = 0.99  # the same label as fp32 on >= 99% of the test inputs
CALIBRATION_SAMPLES = 256
REFERENCE_SAMPLES = 16  # test inputs stored with a variant to check it where it loads (reference_set)
THIS_CPU, EXACT = "this_cpu", "exact_int8"  # the two kernel paths a variant is checked on at export
CALIBRATION_BATCH = 16
# Softmax stays float; everything that carries the convolutions' work is quantized.
INT8_OPS = ("Conv", "MatMul", "Gemm", "Add", "Mul", "GlobalAveragePool", "AveragePool", "Clip", "Relu")


class _CalibrationBatches:
    """onnxruntime's CalibrationDataReader protocol over an input array."""

    def __init__(self, input_name: str, inputs: np.ndarray) -> None:
        self._batches = iter([{input_name: inputs[i : i + CALIBRATION_BATCH]} for i in range(0, len(inputs), CALIBRATION_BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


@dataclass(frozen=True)
class Recipe:
    """How a variant is quantized: the types, ranges and calibration, and which nodes stay fp32.

    `fp32_nodes` names groups of nodes found in the graph: "first_conv" (the conv on the
    image), "depthwise" (convs with group > 1), "head" (the MatMul/Gemm classifier).
    """

    activations: str = "uint8"
    weights: str = "int8"
    per_channel: bool = True
    reduce_range: bool = False  # 7-bit weights: no int16 overflow in u8s8 kernels without VNNI
    method: str = "MinMax"
    fp32_nodes: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        weights = f"{self.weights}{' (7-bit range)' if self.reduce_range else ''}, {'per channel' if self.per_channel else 'per tensor'}"
        return {
            "activations": self.activations,
            "weights": weights,
            "reduce_range": self.reduce_range,
            "calibration_method": self.method,
            "fp32_nodes": list(self.fp32_nodes),
        }


# Chosen by experiments/int8_sweep.py (experiments/results/int8_sweep.md), measured on this project's AMD EPYC
# (AVX2, no VNNI) on the 1,000 test photos and 3,000 shifted ones, on this CPU's kernels and on exact int8:
RECIPE = Recipe(fp32_nodes=("first_conv",))
RECIPE_CHOICE = (
    "uint8 activations, int8 per-channel weights, MinMax, every conv, depthwise conv and the head in int8 but the first "
    "conv, kept fp32: its 27-long dot products of full-range pixels and weights saturate 1.7% of the u8s8 pairs on CPUs "
    "without VNNI (later convs 1e-4 or less). Measured (experiments/int8_sweep.py): same label as fp32 on 99.8% of the test "
    "photos on both AVX2's kernels and exact int8 (what VNNI/AMX compute), accuracy 0.982 = fp32, 99.1% / 99.2% of the "
    "shifted photos, 2.0x fp32's img/s on AVX2; on the 1,000 test photos the AVX2 and exact answers never differ in label "
    "(max |prob diff| 0.057). Rejected: every conv int8 (v2's: 97.0% on AVX2, accuracy 0.958), s8s8 (the same), reduce_range "
    "(exact on both but accuracy 0.980 and 98.3% of shifted photos), u8u8 (accuracy 0.979, 98.7% shifted, 1.1x fp32)."
)
QUANT_TYPES = {"uint8": "QUInt8", "int8": "QInt8"}


def fp32_node_names(model: onnx.ModelProto, groups: tuple[str, ...]) -> list[str]:
    """The names of the nodes in `groups` (see Recipe.fp32_nodes), in graph order."""
    nodes = list(model.graph.node)
    convs = [n for n in nodes if n.op_type == "Conv"]
    chosen: set[str] = set()
    for group in groups:
        if group == "first_conv":
            chosen |= {convs[0].name} if convs else set()
        elif group == "depthwise":
            chosen |= {n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)}
        elif group == "head":
            chosen |= {n.name for n in nodes if n.op_type in ("MatMul", "Gemm")}
        else:
            raise ValueError(f"unknown node group {group!r}: use first_conv, depthwise or head")
    return [n.name for n in nodes if n.name in chosen]


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: np.ndarray, recipe: Recipe | None = None, seed: int = 0) -> dict[str, Any]:
    """Static INT8 in QDQ form by `recipe` (default: RECIPE), calibrated on a sample of `calibration`; the recipe record."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    recipe = recipe or RECIPE
    rows = np.sort(np.random.RandomState(seed).choice(len(calibration), size=min(len(calibration), CALIBRATION_SAMPLES), replace=False))
    prepared = int8_path.with_name(int8_path.name + ".pre.onnx")
    try:
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)  # static image shapes: ONNX inference suffices
        model = onnx.load(str(prepared))
        excluded = fp32_node_names(model, recipe.fp32_nodes)
        quantize_static(
            str(prepared),
            str(int8_path),
            _CalibrationBatches(model.graph.input[0].name, calibration[rows]),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType[QUANT_TYPES[recipe.activations]],
            weight_type=QuantType[QUANT_TYPES[recipe.weights]],
            per_channel=recipe.per_channel,
            reduce_range=recipe.reduce_range,
            calibrate_method=CalibrationMethod[recipe.method],
            op_types_to_quantize=list(INT8_OPS),
            nodes_to_exclude=excluded,
        )
    finally:
        prepared.unlink(missing_ok=True)
        for leftover in int8_path.parent.glob("augmented_model*.onnx"):
            leftover.unlink()
    return {
        "format": "QDQ",
        **recipe.describe(),
        **({"chosen_because": RECIPE_CHOICE} if recipe == RECIPE else {}),
        "fp32_node_names": excluded,
        "calibration": f"{recipe.method} over {len(rows)} training inputs (seed {seed})",
        "ops": list(INT8_OPS),
        "tool": f"onnxruntime.quantization.quantize_static (onnxruntime {ort.__version__})",
    }


def exact_arithmetic(int8_path: Path) -> bytes:
    """The variant as exact int8 arithmetic computes it: weights dequantized ahead of time, activations' Q/DQ pairs kept.

    Every layer then sees the int8-rounded activations and weights that an exact kernel
    (AVX-512 VNNI, AVX-VNNI, AMX) multiplies, summed in float instead of int32, on any CPU.
    Close to those kernels, not equal: they requantize with their own rounding (module
    docstring). Run it with `int8_session(..., reference=True)`.
    """
    model = onnx.load(str(int8_path))
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in constants:
            kept.append(node)
            continue
        q = constants[node.input[0]].astype(np.float64)
        scale = constants[node.input[1]].astype(np.float64)
        zero = constants[node.input[2]].astype(np.float64) if len(node.input) > 2 and node.input[2] else np.zeros_like(scale)
        if scale.ndim == 1 and q.ndim > 1:  # per channel along `axis` (ONNX default 1)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        model.graph.initializer.append(numpy_helper.from_array(((q - zero) * scale).astype(np.float32), node.output[0]))
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model.SerializeToString()


def int8_session(int8_path: Path, reference: bool = False, threads: int = 0, u8u8: bool = False) -> ort.InferenceSession:
    """The variant as onnxruntime runs it on this CPU (fused int8 kernels), or with `reference` as exact arithmetic would.

    onnxruntime's WeightBiasQuantization would quantize the reference's float weights again
    and bring the fused kernels back, so the reference session runs without it. `u8u8`: the
    session option session.x64quantprecision, which on CPUs without VNNI turns s8 weights into
    u8 at load so that the exact (and slower) u8u8 kernels run.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # the reference graph leaves the quantized weights unused: one warning each
    if u8u8:
        options.add_session_config_entry("session.x64quantprecision", "1")
    if reference:
        return ort.InferenceSession(
            exact_arithmetic(int8_path), options, providers=["CPUExecutionProvider"], disabled_optimizers=["WeightBiasQuantization"]
        )
    return ort.InferenceSession(str(int8_path), options, providers=["CPUExecutionProvider"])


def probabilities(session: ort.InferenceSession, inputs: np.ndarray, batch_size: int = 32) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: inputs[i : i + batch_size]})[0] for i in range(0, len(inputs), batch_size)])


def agreement(fp32: np.ndarray, int8: np.ndarray, labels: np.ndarray | None = None) -> dict[str, Any]:
    """How close INT8's probabilities are to fp32's on the same inputs (and both files' accuracy when `labels` are given)."""
    same = fp32.argmax(axis=1) == int8.argmax(axis=1)
    result: dict[str, Any] = {
        "samples": len(fp32),
        "label_agreement": float(same.mean()),
        "max_prob_diff": float(np.abs(fp32 - int8).max()),
    }
    if labels is not None:
        result |= {
            "accuracy_fp32": float((fp32.argmax(axis=1) == labels).mean()),
            "accuracy_int8": float((int8.argmax(axis=1) == labels).mean()),
        }
    return result


def _paths(
    fp32_path: Path, int8_path: Path, sets: Mapping[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """fp32's probabilities on each set, and the variant's on both kernel paths (this CPU's kernels, exact int8 arithmetic)."""
    started = time.monotonic()

    def run(session: ort.InferenceSession, label: str) -> dict[str, np.ndarray]:
        answers = {name: probabilities(session, inputs) for name, inputs in sets.items()}
        print(f"[int8] {label}: {sum(map(len, sets.values()))} inputs done ({time.monotonic() - started:.0f} s)", flush=True)
        return answers

    expected = run(ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"]), "fp32")
    int8 = {
        path: run(int8_session(int8_path, reference=reference), f"int8, {path}") for path, reference in ((THIS_CPU, False), (EXACT, True))
    }
    return expected, int8


def check_int8(
    fp32_path: Path,
    int8_path: Path,
    inputs: np.ndarray,
    labels: np.ndarray,
    shifted: Mapping[str, np.ndarray] | None = None,
    max_drop: float = MAX_ACCURACY_DROP,
    min_agreement: float = MIN_AGREEMENT,
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """INT8 against fp32 on the test inputs and on each shifted set, on both kernel paths; `passed` says if INT8 may ship.

    Both paths: this CPU's int8 kernels, and exact int8 arithmetic (int8_session's reference),
    close to what VNNI and AMX kernels compute: a variant passes only if it is right on both,
    wherever the export runs. Top-level numbers are the worse path's. Also returns the
    probabilities (fp32's, and INT8's by path and set), for the reference set.
    """
    sets = {"test": inputs, **(shifted or {})}
    expected, int8 = _paths(fp32_path, int8_path, sets)
    by_path: dict[str, Any] = {}
    for path, answers in int8.items():
        test = agreement(expected["test"], answers["test"], labels)
        shifts = {name: agreement(expected[name], answers[name]) for name in sets if name != "test"}
        pooled = sum(r["label_agreement"] * r["samples"] for r in shifts.values()) / max(1, sum(r["samples"] for r in shifts.values()))
        by_path[path] = {
            "test": test,
            "shifts": {
                "samples": sum(r["samples"] for r in shifts.values()),
                "label_agreement": pooled if shifts else None,
                "worst_shift": min(shifts, key=lambda n: shifts[n]["label_agreement"]) if shifts else None,
                "max_prob_diff": max((r["max_prob_diff"] for r in shifts.values()), default=None),
                "by_shift": {name: round(r["label_agreement"], 4) for name, r in shifts.items()},
            },
        }
    worst = min(by_path.values(), key=lambda r: (r["test"]["accuracy_int8"], r["test"]["label_agreement"]))["test"]
    shift_agreement = min(
        (r["shifts"]["label_agreement"] for r in by_path.values() if r["shifts"]["label_agreement"] is not None), default=None
    )
    passed = all(
        r["test"]["accuracy_fp32"] - r["test"]["accuracy_int8"] <= max_drop
        and r["test"]["label_agreement"] >= min_agreement
        and (r["shifts"]["label_agreement"] is None or r["shifts"]["label_agreement"] >= min_agreement)
        for r in by_path.values()
    )
    check = {
        "samples": len(labels),
        "accuracy_fp32": worst["accuracy_fp32"],
        "accuracy_int8": min(r["test"]["accuracy_int8"] for r in by_path.values()),
        "label_agreement": min(r["test"]["label_agreement"] for r in by_path.values()),
        "max_prob_diff": max(r["test"]["max_prob_diff"] for r in by_path.values()),
        "shifted_samples": sum(len(v) for k, v in sets.items() if k != "test"),
        "shifted_label_agreement": shift_agreement,
        "max_accuracy_drop": max_drop,
        "min_label_agreement": min_agreement,
        "paths": by_path,
        "exported_on": cpu_report()["int8_kernels"],
        "passed": passed,
    }
    return check, expected, int8


def reference_set(
    inputs: np.ndarray, expected: np.ndarray, int8: Mapping[str, np.ndarray], bounds: Int8Bounds, samples: int = REFERENCE_SAMPLES
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The inputs stored with the variant to check it where it loads, fp32's probabilities on them, and how it did on them here.

    Only inputs where the variant, on every path checked at export, stays within half the
    probability bound of fp32 are eligible: quantization alone must not bring the check near
    its bound, or an exact CPU could refuse a good variant (random test photos would: v2's
    variant, exact, differs by more than 0.05 on 3.6% of them). Of those, half are the least
    confident for fp32, where a kernel that computes differently moves the probabilities most
    (v2's variant, exported on a VNNI CPU, would have had 4 of those 8 flip label on AVX2), half
    spread over the rest.
    """
    close = np.all([np.abs(answers - expected).max(axis=1) <= bounds.max_prob_diff / 2 for answers in int8.values()], axis=0)
    close &= np.all([answers.argmax(axis=1) == expected.argmax(axis=1) for answers in int8.values()], axis=0)
    eligible = [i for i in np.argsort(expected.max(axis=1), kind="stable") if close[i]]
    hard = eligible[: samples // 2]
    rest = eligible[samples // 2 :]
    spread = [rest[k] for k in np.linspace(0, len(rest) - 1, min(samples - len(hard), len(rest))).round().astype(int)] if rest else []
    rows = np.sort(np.array(hard + spread, dtype=int))
    at_export = {path: compare(answers[rows], expected[rows], bounds).describe() for path, answers in int8.items()}
    return inputs[rows], expected[rows], at_export


def int8_variant(
    model_path: Path,
    calibration: np.ndarray,
    test_inputs: np.ndarray,
    test_labels: np.ndarray,
    shifted: Mapping[str, np.ndarray] | None = None,
    recipe: Recipe | None = None,
    **limits: float,
) -> dict[str, Any]:
    """Quantize beside model.onnx, check it, store its reference set; the metadata block for "variants" -> "int8".

    A refused variant is deleted and only the record of its check is kept.
    """
    int8_path = model_path.with_name(INT8_FILE)
    recipe = recipe or RECIPE
    print(
        f"[int8] static QDQ quantization, calibrated on training inputs ({min(len(calibration), CALIBRATION_SAMPLES)}): {recipe}",
        flush=True,
    )
    record = quantize_int8(model_path, int8_path, calibration, recipe)
    print(f"[int8] checking on {len(test_inputs)} test inputs and {sum(len(v) for v in (shifted or {}).values())} shifted ones", flush=True)
    check, expected, int8 = check_int8(model_path, int8_path, test_inputs, test_labels, shifted, **limits)
    summary = (
        f"accuracy {check['accuracy_int8']:.4f} vs fp32 {check['accuracy_fp32']:.4f}, same label on {check['label_agreement']:.2%} "
        f"of {check['samples']} test inputs"
        + (f" and {check['shifted_label_agreement']:.2%} of {check['shifted_samples']} shifted ones" if shifted else "")
        + f", worse of this CPU's kernels and exact int8 (limits: {check['max_accuracy_drop']:.3f} drop, {check['min_label_agreement']:.0%} agreement)"
    )
    bounds = Int8Bounds()
    inputs, probabilities_fp32, at_export = reference_set(test_inputs, expected["test"], {p: a["test"] for p, a in int8.items()}, bounds)
    if check["passed"] and not all(r["passed"] for r in at_export.values()):
        check["passed"] = False
        summary += f"; but its own reference set would refuse it at load: {at_export}"
    if not check["passed"]:
        int8_path.unlink()
        print(f"[int8] REFUSED, {INT8_FILE} not written: {summary}", flush=True)
        return {"file": None, "written": False, "check": check, "recipe": record}
    reference_path = model_path.with_name(INT8_REFERENCE_FILE)
    reference_path.write_bytes(encode_inputs(inputs))
    print(f"[int8] {INT8_FILE} passed: {summary}; reference set {reference_path.stat().st_size / 1e6:.2f} MB", flush=True)
    reference = {
        "file": INT8_REFERENCE_FILE,
        "sha256": sha256_file(reference_path),
        "bytes": reference_path.stat().st_size,
        "samples": len(inputs),
        "selection": f"{len(inputs)} test inputs within {bounds.max_prob_diff / 2:g} of fp32 at export: the least confident half, the rest spread",
        "at_export": at_export,
        "fp32_probabilities": [[round(float(p), 7) for p in row] for row in probabilities_fp32],
    }
    variant = {"file": INT8_FILE, "written": True, "sha256": sha256_file(int8_path), "bytes": int8_path.stat().st_size}
    return variant | {
        "check": check,
        "recipe": record,
        "reference": reference,
        "use": "the CPU execution provider, where it answers its reference set like fp32 at load; GPUs run model.onnx",
    }


def add_int8_variant(
    registry: Registry,
    source: ModelVersion,
    calibration: np.ndarray,
    test_inputs: np.ndarray,
    test_labels: np.ndarray,
    shifted: Mapping[str, np.ndarray] | None = None,
    recipe: Recipe | None = None,
) -> ModelVersion:
    """A new version: `source`'s files and metadata, plus a checked INT8 variant (or the record of its refusal)."""
    metadata = source.verify()
    with registry.new_version(source.name) as staged:
        for item in source.path.iterdir():
            if item.is_file() and item.name not in (METADATA_FILE, INT8_FILE, INT8_REFERENCE_FILE):
                shutil.copy2(item, staged.path / item.name)
        variant = int8_variant(staged.path / metadata["model_file"], calibration, test_inputs, test_labels, shifted, recipe)
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

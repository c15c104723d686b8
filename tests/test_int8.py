"""INT8 variants: made and checked at export (both kernel paths, shifted inputs) on a small real model, checked again on
the CPU that loads them (a disagreeing one falls back to fp32 and says why), chosen by provider; the shipped one agrees with fp32."""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from service.batch import cli as batch_cli
from service.core.config import Settings
from service.core.cpu import cpu_report
from service.core.int8_reference import Int8Bounds, compare, decode_inputs, encode_inputs
from service.core.preprocessing import ImageSpec, decode_image
from service.core.registry import INT8_FILE, INT8_REFERENCE_FILE, METADATA_FILE, MODEL_FILE, ModelVersion, Registry, sha256_file
from service.core.runtime import ModelRuntime, choose_model_file, load_model
from service.core.sessions import SessionConfig
from training.quantize import Recipe, add_int8_variant

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = Registry(ROOT / "models")
FIXTURES = Path(__file__).parent / "fixtures"
NAME = "image_classifier"
SIZE = 8
CPU = ("CPUExecutionProvider",)
# The tiny model's one conv is its first: the shipped recipe would keep it fp32. These tests are about the mechanism.
ALL_INT8 = Recipe()


def tiny_classifier(path: Path) -> None:
    """A real convnet in miniature (uint8 NHWC -> Conv -> Relu -> GlobalAveragePool -> Gemm -> Softmax): red vs blue."""
    conv = np.zeros((4, 3, 1, 1), np.float32)
    conv[0, 0], conv[1, 2], conv[2, 1], conv[3] = 1 / 255, 1 / 255, 1 / 255, 1 / 765
    dense = np.array([[8, -8], [-8, 8], [0, 0], [0, 0]], np.float32)
    weights = {"conv_w": conv, "conv_b": np.zeros(4, np.float32), "fc_w": dense, "fc_b": np.zeros(2, np.float32)}
    nodes = [
        helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["pixels"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "conv_w", "conv_b"], ["conv"]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def photos(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images, reddish (label 0) or bluish (label 1)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    x = rng.integers(0, 256, (n, SIZE, SIZE, 3)).astype(np.float32)
    x[labels == 0, :, :, 0] = x[labels == 0, :, :, 0] * 0.3 + 150
    x[labels == 1, :, :, 2] = x[labels == 1, :, :, 2] * 0.3 + 150
    return x.astype(np.uint8), labels


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return tiny_registry(tmp_path)


def tiny_registry(tmp_path: Path) -> Registry:
    """A registry whose image_classifier v1 is the tiny model, with the shipped model's metadata fitted to it."""
    version = tmp_path / NAME / "1"
    version.mkdir(parents=True)
    tiny_classifier(version / MODEL_FILE)
    metadata = SHIPPED.current(NAME).read_metadata()
    for key in ("variants", "derived_from", "profile"):  # the shipped version's files, which the tiny one has not
        metadata.pop(key, None)
    metadata |= {"version": 1, "sha256": sha256_file(version / MODEL_FILE), "labels": ["red", "blue"]}
    metadata["inputs"] = [{"name": "image", "dtype": "uint8", "shape": [None, SIZE, SIZE, 3]}]
    metadata["preprocessing"] = ImageSpec(SIZE, SIZE).to_json()
    (version / METADATA_FILE).write_text(json.dumps(metadata))
    (tmp_path / NAME / "CURRENT").write_text("1\n")
    return Registry(tmp_path)


def shifted(inputs: np.ndarray) -> dict[str, np.ndarray]:
    """The test photos darker and noisier: what the export check covers beside the test split."""
    noise = np.random.default_rng(3).normal(0, 20, inputs.shape)
    return {"dark": (inputs * 0.6).astype(np.uint8), "noise": (inputs + noise).clip(0, 255).astype(np.uint8)}


def with_variant(registry: Registry) -> ModelVersion:
    calibration, _ = photos(400, seed=1)
    test_inputs, test_labels = photos(300, seed=2)
    return add_int8_variant(registry, registry.get(NAME, 1), calibration, test_inputs, test_labels, shifted(test_inputs), ALL_INT8)


def test_a_calibrated_variant_passes_its_check_on_both_kernel_paths_and_runs_on_the_cpu(registry: Registry) -> None:
    version = with_variant(registry)
    metadata = version.read_metadata()
    variant = metadata["variants"]["int8"]
    assert version.version == 2 and variant["written"] and (version.path / INT8_FILE).is_file()
    check = variant["check"]
    assert check["accuracy_fp32"] == 1.0 and check["label_agreement"] >= 0.99 and check["shifted_label_agreement"] >= 0.99
    assert set(check["paths"]) == {"this_cpu", "exact_int8"} and check["shifted_samples"] == 600
    assert set(check["paths"]["exact_int8"]["shifts"]["by_shift"]) == {"dark", "noise"}
    reference = variant["reference"]
    assert reference["samples"] == 16 and len(reference["fp32_probabilities"]) == 16 and (version.path / INT8_REFERENCE_FILE).is_file()
    assert all(r["passed"] for r in reference["at_export"].values())
    assert metadata["derived_from"]["version"] == 1 and metadata["sha256"] == registry.get(NAME, 1).verify()["sha256"]
    assert not (registry.get(NAME, 1).path / INT8_FILE).exists(), "the source version is never modified"
    model = load_model(version, list(CPU))
    described = model.describe()["model_file"]
    assert described["file"] == INT8_FILE and described["precision"] == "int8" and described["int8_check"]["passed"]
    assert described["int8_check"]["samples"] == 16 and described["cpu_int8_kernels"] == cpu_report()["int8_kernels"]
    fp32 = load_model(version, list(CPU), int8=False)
    assert fp32.model_file.precision == "fp32" and "MODELSERVE_INT8" in fp32.model_file.note
    test_inputs, _ = photos(300, seed=2)
    answers, reference_answers = model.predict(list(test_inputs[:50])), fp32.predict(list(test_inputs[:50]))
    assert [a["label"] for a in answers] == [a["label"] for a in reference_answers]


def test_the_reference_set_is_stored_losslessly() -> None:
    inputs = np.random.default_rng(0).integers(0, 256, (5, SIZE, SIZE + 3, 3)).astype(np.uint8)
    assert np.array_equal(decode_inputs(encode_inputs(inputs), 5), inputs)


def test_a_label_swap_where_fp32_itself_is_within_the_bound_is_not_a_disagreement() -> None:
    """What an AMD EPYC with AVX-512 VNNI did to the shipped variant's reference set: fp32 0.475 / 0.525, int8 0.500 /
    0.500 (argmax: the other class), every answer within 0.035. A swap where fp32's top two are closer than 0.1 is not
    counted; one where fp32 leads by more is refused, the probability bound loosened or not, and so is any answer
    beyond the bound."""
    expected = np.array([[0.4753, 0.5247], [0.9, 0.1], [0.2, 0.8], [0.999, 0.001]], np.float32)
    tie_swapped = np.array([[0.5000, 0.5000], [0.88, 0.12], [0.21, 0.79], [0.999, 0.001]], np.float32)
    check = compare(tie_swapped, expected, Int8Bounds())
    assert check.passed and (check.samples, check.sure, check.same_label) == (4, 3, 3), check.summary()
    assert "same label as fp32 on 3 of 3 reference inputs" in check.summary() and "1 of 4 closer than 0.1" in check.summary()
    sure_swapped = tie_swapped.copy()
    sure_swapped[1] = [0.45, 0.55]  # fp32 0.9 / 0.1, then beyond the bound too
    assert not compare(sure_swapped, expected, Int8Bounds()).passed
    loose = Int8Bounds(min_label_agreement=0.99, max_prob_diff=0.46)  # the probability bound loosened: sure labels still count
    loosened = compare(sure_swapped, expected, loose)
    assert loosened.label_agreement < 0.99 and not loosened.passed
    off = tie_swapped.copy()
    off[3] = [0.9, 0.1]  # same label, 0.099 away
    assert not compare(off, expected, Int8Bounds()).passed


def test_a_variant_too_far_from_fp32_is_refused_and_the_refusal_recorded(registry: Registry) -> None:
    """Calibrated on black images, the activation ranges are wrong: the check sees it and nothing is written."""
    test_inputs, test_labels = photos(300, seed=2)
    version = add_int8_variant(
        registry, registry.get(NAME, 1), np.zeros((64, SIZE, SIZE, 3), np.uint8), test_inputs, test_labels, recipe=ALL_INT8
    )
    variant = version.read_metadata()["variants"]["int8"]
    assert variant["written"] is False and not variant["check"]["passed"] and variant["check"]["label_agreement"] < 0.99
    assert not (version.path / INT8_FILE).exists() and not (version.path / INT8_REFERENCE_FILE).exists()
    model = load_model(version, list(CPU))
    assert model.model_file.precision == "fp32" and "no int8 variant that passed" in model.model_file.note


def test_a_variant_right_on_the_test_split_but_not_on_shifted_photos_is_refused(registry: Registry) -> None:
    """The shifted sets are part of the check. Overexposed photos (every channel near 255, red or blue only a
    little ahead) pool above the range calibrated on ordinary ones: INT8 clips both classes alike, fp32 does not."""
    calibration, _ = photos(400, seed=1)
    test_inputs, test_labels = photos(300, seed=2)
    bright = np.repeat(np.random.default_rng(4).integers(236, 250, (300, SIZE, SIZE, 1)), 3, axis=3)
    bright[:150, :, :, 0] += 5
    bright[150:, :, :, 2] += 5
    overexposed = {"overexposed": bright.astype(np.uint8)}
    version = add_int8_variant(registry, registry.get(NAME, 1), calibration, test_inputs, test_labels, overexposed, ALL_INT8)
    check = version.read_metadata()["variants"]["int8"]["check"]
    assert check["label_agreement"] >= 0.99, "right on the test split"
    assert check["shifted_label_agreement"] < 0.99 and not check["passed"] and not (version.path / INT8_FILE).exists()
    assert check["paths"]["exact_int8"]["shifts"]["worst_shift"] == "overexposed"


def disagreeing(version: ModelVersion) -> None:
    """Make the stored INT8 file answer unlike fp32 while its checksum still matches: what another CPU's kernels can do.

    The non-VNNI kernel path cannot be forced on a VNNI CPU, so the variant itself is made to
    disagree: the classifier's int8 weights swapped between the two classes.
    """
    path = version.path / INT8_FILE
    model = onnx.load(str(path))
    head = next(i for i in model.graph.initializer if i.name.startswith("fc_w") and len(i.dims) == 2)
    assert head.data_type in (TensorProto.INT8, TensorProto.UINT8), "the head's weights are stored quantized"
    head.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(head)[:, ::-1].copy(), head.name))
    onnx.save(model, str(path))
    metadata = version.read_metadata()
    metadata["variants"]["int8"]["sha256"] = sha256_file(path)
    (version.path / METADATA_FILE).write_text(json.dumps(metadata))


def test_a_variant_that_disagrees_on_this_cpu_is_not_used_and_everything_says_why(
    registry: Registry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    version = with_variant(registry)
    disagreeing(version)
    registry.promote(NAME, version.version)
    with caplog.at_level(logging.WARNING, logger="modelserve.runtime"):
        runtime = ModelRuntime(Settings(model_root=registry.root, models=(NAME,)))
        runtime.load_all()
    served = runtime.describe()["models"][0]  # GET /models shows this
    assert served["version"] == version.version and served["model_file"]["file"] == MODEL_FILE
    note = served["model_file"]["note"]
    assert note.startswith(f"INT8 variant not used: on this CPU ({cpu_report()['int8_kernels']}) it gives same label as fp32 on 0 of 16")
    assert "needs >= 99%" in note and "max |prob diff|" in note and served["model_file"]["int8_check"]["passed"] is False
    assert runtime.describe()["cpu"] == cpu_report()
    assert any(note in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records), "the log says why too"
    test_inputs, _ = photos(40, seed=5)
    fp32 = load_model(version, list(CPU), int8=False)
    assert runtime.get(NAME).predict(list(test_inputs)) == fp32.predict(list(test_inputs)), "model.onnx answers"

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, image in enumerate(test_inputs[:6]):
        Image.fromarray(image).save(folder / f"{i}.png")
    stream = io.StringIO()
    status = batch_cli.main(
        [NAME, str(folder), "-o", str(tmp_path / "scores.jsonl"), "--model-root", str(registry.root), "--executor", "thread"], stream=stream
    )
    summary = stream.getvalue()
    assert status == 0, summary
    assert f"({MODEL_FILE}): 6 of 6" in summary and f"model file: {MODEL_FILE} (fp32: {note.split(' on this CPU')[0]}" in summary, summary

    loose = load_model(version, list(CPU), int8_bounds=Int8Bounds(min_label_agreement=0.0, max_prob_diff=1.0))
    assert loose.model_file.precision == "int8", "the bounds are settings: loosened, the same variant serves"


def test_the_variant_is_chosen_by_provider_and_a_damaged_one_or_reference_is_not_run(tmp_path: Path) -> None:
    shutil.copytree(SHIPPED.root / NAME, tmp_path / NAME)
    version = Registry(tmp_path).get(NAME, SHIPPED.current_version(NAME))  # the served version, which has a variant
    metadata = version.verify()
    assert choose_model_file(version, metadata, SessionConfig(CPU)).precision == "int8"
    on_gpu = choose_model_file(version, metadata, SessionConfig(("CUDAExecutionProvider", *CPU)))
    assert on_gpu.path.name == MODEL_FILE and "GPU providers run" in on_gpu.note
    with open(version.path / INT8_REFERENCE_FILE, "ab") as handle:
        handle.write(b"\0")
    unchecked = load_model(version, list(CPU))
    assert unchecked.model_file.path.name == MODEL_FILE and f"checksum mismatch for {INT8_REFERENCE_FILE}" in unchecked.model_file.note
    with open(version.path / INT8_FILE, "ab") as handle:
        handle.write(b"\0")
    damaged = load_model(version, list(CPU))
    assert damaged.model_file.path.name == MODEL_FILE and "checksum mismatch" in damaged.model_file.note
    assert damaged.describe()["model_file"]["note"].startswith("INT8 variant refused")


def test_a_version_without_a_reference_set_does_not_run_int8(registry: Registry) -> None:
    version = with_variant(registry)
    metadata = version.read_metadata()
    del metadata["variants"]["int8"]["reference"]  # as versions exported before the reference set was stored
    (version.path / METADATA_FILE).write_text(json.dumps(metadata))
    model = load_model(version, list(CPU))
    assert model.model_file.precision == "fp32" and "has no reference set to check it on this CPU" in model.model_file.note


def test_the_shipped_int8_variant_is_checked_on_this_cpu_and_agrees_with_fp32() -> None:
    """Whatever CPU runs this: the shipped variant passed its export check on both kernel paths, passes its
    reference check here, and answers the fixture photos like fp32. (Exact int32 sums (VNNI, AMX) do not
    make the answers those of the export's float emulation: the fused kernels requantize in their own way,
    up to 0.036 apart on an AMD EPYC with AVX-512 VNNI; the check's bounds hold on every path.)"""
    version = SHIPPED.current(NAME)
    metadata = version.verify()
    variant = metadata["variants"]["int8"]
    assert variant["written"] and variant["reference"]["samples"] >= 16, "the served image model carries a checked INT8 variant"
    check = variant["check"]
    assert check["passed"] and check["accuracy_fp32"] - check["accuracy_int8"] <= 0.005 and check["label_agreement"] >= 0.99
    assert check["shifted_label_agreement"] >= 0.99 and check["shifted_samples"] >= 1000
    int8, fp32 = load_model(version, list(CPU)), load_model(version, list(CPU), int8=False)
    kernels = cpu_report()
    assert int8.model_file.cpu == kernels["int8_kernels"]
    assert int8.model_file.precision == "int8", f"on this CPU ({kernels['int8_kernels']}): {int8.model_file.note}"
    here = int8.model_file.check
    assert here is not None and here["passed"] and here["label_agreement"] == 1.0 and here["labels_compared"] >= 12
    spec = ImageSpec.from_json(metadata["preprocessing"])
    images = [decode_image((FIXTURES / name).read_bytes(), spec) for name in ("cat.jpg", "dog.jpg")]
    answers, reference = int8.predict(images), fp32.predict(images)
    assert [a["label"] for a in answers] == [a["label"] for a in reference] == ["cats", "dogs"]
    for a, r in zip(answers, reference, strict=True):
        assert abs(a["score"] - r["score"]) < 0.05

"""INT8 variants: made and checked at export on a small real model, chosen by provider at load, the shipped one agrees with fp32."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.core.preprocessing import ImageSpec, decode_image
from service.core.registry import INT8_FILE, METADATA_FILE, MODEL_FILE, Registry, sha256_file
from service.core.runtime import choose_model_file, load_model
from service.core.sessions import SessionConfig
from training.quantize import add_int8_variant

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = Registry(ROOT / "models")
FIXTURES = Path(__file__).parent / "fixtures"
NAME = "image_classifier"
SIZE = 8
CPU = ("CPUExecutionProvider",)


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
    """A registry whose image_classifier v1 is the tiny model, with the shipped model's metadata fitted to it."""
    version = tmp_path / NAME / "1"
    version.mkdir(parents=True)
    tiny_classifier(version / MODEL_FILE)
    metadata = SHIPPED.get(NAME, 1).read_metadata()
    metadata |= {"version": 1, "sha256": sha256_file(version / MODEL_FILE), "labels": ["red", "blue"]}
    metadata["inputs"] = [{"name": "image", "dtype": "uint8", "shape": [None, SIZE, SIZE, 3]}]
    metadata["preprocessing"] = ImageSpec(SIZE, SIZE).to_json()
    (version / METADATA_FILE).write_text(json.dumps(metadata))
    (tmp_path / NAME / "CURRENT").write_text("1\n")
    return Registry(tmp_path)


def test_a_calibrated_variant_passes_its_check_and_runs_on_the_cpu(registry: Registry) -> None:
    calibration, _ = photos(400, seed=1)
    test_inputs, test_labels = photos(300, seed=2)
    version = add_int8_variant(registry, registry.get(NAME, 1), calibration, test_inputs, test_labels)
    metadata = version.read_metadata()
    variant = metadata["variants"]["int8"]
    assert version.version == 2 and variant["written"] and (version.path / INT8_FILE).is_file()
    assert variant["check"]["accuracy_fp32"] == 1.0 and variant["check"]["label_agreement"] >= 0.99
    assert metadata["derived_from"]["version"] == 1 and metadata["sha256"] == registry.get(NAME, 1).verify()["sha256"]
    assert not (registry.get(NAME, 1).path / INT8_FILE).exists(), "the source version is never modified"
    model = load_model(version, list(CPU))
    assert model.describe()["model_file"] == {"file": INT8_FILE, "precision": "int8"}
    fp32 = load_model(version, list(CPU), int8=False)
    assert fp32.model_file.precision == "fp32" and "MODELSERVE_INT8" in fp32.model_file.note
    answers, reference = model.predict(list(test_inputs[:50])), fp32.predict(list(test_inputs[:50]))
    assert [a["label"] for a in answers] == [a["label"] for a in reference]


def test_a_variant_too_far_from_fp32_is_refused_and_the_refusal_recorded(registry: Registry) -> None:
    """Calibrated on black images, the activation ranges are wrong: the check sees it and nothing is written."""
    test_inputs, test_labels = photos(300, seed=2)
    version = add_int8_variant(registry, registry.get(NAME, 1), np.zeros((64, SIZE, SIZE, 3), np.uint8), test_inputs, test_labels)
    variant = version.read_metadata()["variants"]["int8"]
    assert variant["written"] is False and not variant["check"]["passed"] and variant["check"]["label_agreement"] < 0.99
    assert not (version.path / INT8_FILE).exists()
    model = load_model(version, list(CPU))
    assert model.model_file.precision == "fp32" and "no int8 variant that passed" in model.model_file.note


def test_the_variant_is_chosen_by_provider_and_a_damaged_one_is_not_run(tmp_path: Path) -> None:
    shutil.copytree(SHIPPED.root / NAME, tmp_path / NAME)
    version = Registry(tmp_path).get(NAME, max(Registry(tmp_path).versions(NAME)))
    metadata = version.verify()
    assert choose_model_file(version, metadata, SessionConfig(CPU)).precision == "int8"
    on_gpu = choose_model_file(version, metadata, SessionConfig(("CUDAExecutionProvider", *CPU)))
    assert on_gpu.path.name == MODEL_FILE and "GPU providers run" in on_gpu.note
    with open(version.path / INT8_FILE, "ab") as handle:
        handle.write(b"\0")
    damaged = load_model(version, list(CPU))
    assert damaged.model_file.path.name == MODEL_FILE and "checksum mismatch" in damaged.model_file.note
    assert damaged.describe()["model_file"]["note"].startswith("INT8 variant refused")


def test_the_shipped_int8_variant_loads_and_agrees_with_fp32_on_the_fixture_photos() -> None:
    version = SHIPPED.current(NAME)
    metadata = version.verify()
    assert metadata["variants"]["int8"]["written"], "the served image model carries a checked INT8 variant"
    check = metadata["variants"]["int8"]["check"]
    assert check["accuracy_fp32"] - check["accuracy_int8"] <= 0.005 and check["label_agreement"] >= 0.99
    int8, fp32 = load_model(version, list(CPU)), load_model(version, list(CPU), int8=False)
    assert int8.model_file.precision == "int8" and fp32.model_file.precision == "fp32"
    spec = ImageSpec.from_json(metadata["preprocessing"])
    images = [decode_image((FIXTURES / name).read_bytes(), spec) for name in ("cat.jpg", "dog.jpg")]
    answers, reference = int8.predict(images), fp32.predict(images)
    assert [a["label"] for a in answers] == [a["label"] for a in reference] == ["cats", "dogs"]
    for a, r in zip(answers, reference, strict=True):
        assert abs(a["score"] - r["score"]) < 0.05

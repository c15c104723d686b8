"""image_classifier: the shipped image model, the image kind's recipe on cats vs dogs.

    python -m training image_classifier [--data FOLDER]     # default: download cats vs dogs

The image kind's trainer (training/kinds/image.py) under this name, with its data
downloaded when --data is not given: a pretrained MobileNetV2 base, augmentation,
feature extraction, then fine-tuning (the seed's pretrained-convnet recipe).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from training.kinds import image
from training.publish import TrainingResult

NAME = "image_classifier"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    image.add_arguments(
        parser, data_help="folder with train/[validation/][test/] of class subfolders, or class subfolders (default: download cats vs dogs)"
    )


def train(args: argparse.Namespace) -> TrainingResult:
    args.name = NAME
    return image.train(args)


def quantization_data(args: argparse.Namespace, preprocessing: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training images to calibrate an INT8 variant on, and the test images and labels to check it (`python -m training quantize`)."""
    return image.quantization_data(args, preprocessing)

"""image_classifier: the shipped image model, the image kind's recipe on cats vs dogs.

    python -m training image_classifier [--data FOLDER]     # default: download cats vs dogs

The image kind's trainer (training/kinds/image.py) under this name, with its data
downloaded when --data is not given, and the record of why its served recipe was chosen
(metadata training.chosen_by, when a run uses exactly that recipe).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from training.kinds import image
from training.publish import TrainingResult

NAME = "image_classifier"


# The recipe of image_classifier v3, chosen on the 1,000 validation photos (experiments/image_base_compare.py),
# and why (metadata training.chosen_by, recorded when a run uses exactly these options).
CHOSEN_RECIPE: dict[str, Any] = {
    "base": "efficientnet_lite0",
    "image_size": 224,
    "phase1": "features",
    "photo_copies": 1,
    "epochs": 20,
    "fine_tune_epochs": 0,
    "learning_rate": 1e-3,
    "dropout": 0.2,
    "batch_size": 32,
}
CHOSEN_BY = (
    "v3: heads on frozen EfficientNet-Lite0 224px features, scored on the 1,000 validation photos (mean of 3 seeds) and on "
    "the 12 synthetic shifts of 250 of them: linear + 1 photo copy, 20 epochs: validation 0.9907, shift mean 0.9817; "
    "6 epochs 0.9897 / 0.9821; without photo copies 0.9843 / 0.9811; hidden 256 0.9893 / 0.9803; dropout 0.5 + "
    "label smoothing 0.1 0.9880 / 0.9836; v2 (MobileNet 0.75, fine-tuned) 0.9780 / 0.9640. The training run of v3 (its own "
    "photo copy, seed 0): validation 0.9870, shift mean 0.9770 (v2 0.9640). Fine-tuning was not compared: one run did not fit "
    "the CPU time of the session (experiments/image_base_compare.py)"
)


def chosen_by(args: argparse.Namespace) -> str | None:
    """Why this recipe exists, when the run is the chosen recipe (any pretrained weights file of that base)."""
    return CHOSEN_BY if all(getattr(args, key) == value for key, value in CHOSEN_RECIPE.items()) else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    image.add_arguments(
        parser, data_help="folder with train/[validation/][test/] of class subfolders, or class subfolders (default: download cats vs dogs)"
    )


def train(args: argparse.Namespace) -> TrainingResult:
    args.name = NAME
    result = image.train(args)
    result.training["chosen_by"] = chosen_by(args)
    return result


def quantization_data(
    args: argparse.Namespace, preprocessing: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Training images to calibrate an INT8 variant on; test images, labels and shifted test images to check it (`python -m training quantize`)."""
    return image.quantization_data(args, preprocessing)


def profile_data(args: argparse.Namespace, preprocessing: dict[str, Any]) -> tuple[list[Any], list[Any], dict[str, Any]]:
    """Training image files, decoded test images and the data's record, for a reference profile (`python -m training profile`)."""
    return image.profile_data(args, preprocessing)

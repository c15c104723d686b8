"""Evaluation on the held-out test split, as the seeds do it: a classification report and a confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix


def classification_test(truth: np.ndarray, predicted: np.ndarray, class_names: Sequence[str]) -> tuple[dict[str, Any], np.ndarray]:
    """Print the report; return (the test metrics block of metadata.json, the confusion matrix)."""
    labels = list(range(len(class_names)))
    report = classification_report(truth, predicted, labels=labels, target_names=list(class_names), output_dict=True, zero_division=0)
    print(classification_report(truth, predicted, labels=labels, target_names=list(class_names), digits=4, zero_division=0))
    metrics = {"accuracy": float((predicted == truth).mean()), "samples": len(truth), "classification_report": report}
    return metrics, confusion_matrix(truth, predicted, labels=labels)

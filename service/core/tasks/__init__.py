"""Model kinds as task objects: see base.py for what a task owns."""

from service.core.tasks.base import FOLDER, TABLE, V2_NUMPY_TYPES, Answer, BatchSizes, Gate, Task, Tensor
from service.core.tasks.image_classification import ImageClassification
from service.core.tasks.tabular_regression import TabularRegression
from service.core.tasks.text_classification import TextClassification

__all__ = [
    "FOLDER",
    "TABLE",
    "V2_NUMPY_TYPES",
    "Answer",
    "BatchSizes",
    "Gate",
    "ImageClassification",
    "TabularRegression",
    "Task",
    "Tensor",
    "TextClassification",
]

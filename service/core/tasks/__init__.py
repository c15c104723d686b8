"""Model kinds as task objects, and the ways in that adapt them.

base.py says what a kind's core owns and the kinds implement it (image_classification,
text_classification, tabular_regression); kinds.py picks a version's task from its metadata. Each way in has one module with an adapter
per kind: friendly.py (friendly HTTP API), tensors.py (Open Inference Protocol),
batch_inputs.py (batch tables and folders), gate.py (redeploy gate), profiles.py (drift summaries).
"""

from service.core.tasks.base import Answer, BatchSizes, Task
from service.core.tasks.image_classification import ImageClassification
from service.core.tasks.tabular_regression import TabularRegression
from service.core.tasks.text_classification import TextClassification

__all__ = [
    "Answer",
    "BatchSizes",
    "ImageClassification",
    "TabularRegression",
    "Task",
    "TextClassification",
]

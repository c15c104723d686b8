"""Which task serves a version: read from its metadata, never from its name.

The registry is the catalog (Triton's model repository, TF Serving's model config):
a version's metadata.json says what kind of model it is (`preprocessing.kind`:
image, text or tabular), whether a classifier has two labels or more (`task`), and for
a regressor what its answer is called. Every version of one configuration gets the
same task object, so the adapters made per task (friendly.py's OpenAPI models) are
made once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from typing import Any

from service.core.errors import ModelLoadError
from service.core.tasks.base import Task
from service.core.tasks.image_classification import ImageClassification
from service.core.tasks.tabular_regression import TabularRegression
from service.core.tasks.text_classification import MulticlassTextClassification, TextClassification

KINDS = ("image", "text", "tabular")  # metadata preprocessing.kind; also the training CLI's commands
ANSWER_FIELD_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
RESERVED_ANSWER_FIELDS = ("model", "version", "unit")  # every answer carries these beside the predicted value
DEFAULT_ANSWER_FIELD = "value"


@cache
def _image() -> ImageClassification:
    return ImageClassification()


@cache
def _text(labels: int) -> TextClassification:
    return MulticlassTextClassification() if labels > 2 else TextClassification()


@cache
def tabular(answer_field: str, description: str) -> TabularRegression:
    return TabularRegression(answer_field, description)


def answer_field(metadata: Mapping[str, Any]) -> str:
    """What a regressor's answer calls its value: metadata's answer_field, else the graph's output name (Boston's "price")."""
    preprocessing, outputs = metadata.get("preprocessing") or {}, metadata.get("outputs") or [{}]
    name = str(preprocessing.get("answer_field") or outputs[0].get("name") or DEFAULT_ANSWER_FIELD)
    return name if ANSWER_FIELD_RE.fullmatch(name) and name not in RESERVED_ANSWER_FIELDS else DEFAULT_ANSWER_FIELD


def task_for(metadata: Mapping[str, Any]) -> Task:
    """The task that serves a version with this metadata; ModelLoadError when its kind is not one this service knows."""
    preprocessing = metadata.get("preprocessing") or {}
    kind = preprocessing.get("kind")
    if kind == "image":
        return _image()
    if kind == "text":
        return _text(len(metadata.get("labels") or ()))
    if kind == "tabular":
        field = answer_field(metadata)
        return tabular(field, f"predicted {preprocessing.get('target') or field}")
    raise ModelLoadError(f"{metadata.get('name')} v{metadata.get('version')}: unknown kind {kind!r} (preprocessing.kind); known: {KINDS}")

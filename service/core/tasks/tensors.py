"""The Open Inference Protocol's side of each kind: its input and output tensors (KServe v2).

One adapter per kind declares the tensors (service/http/v2.py serves them over REST;
any other transport of the protocol reuses them), turns one element of an input
tensor into the raw value the task's `check` takes, and lays answers out as output
arrays. Decoding a tensor from the wire is the transport's business (v2_codec.py).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from service.core.config import Settings
from service.core.errors import InputError
from service.core.preprocessing import ImageSpec, TableEncoder
from service.core.tasks.base import Answer, Assets, Task, for_kind
from service.core.tasks.image_classification import ImageClassification, upload_bytes
from service.core.tasks.tabular_regression import TabularRegression
from service.core.tasks.text_classification import MulticlassTextClassification, TextClassification

# The Open Inference Protocol's numeric datatypes as NumPy types (BYTES tensors are object arrays of bytes).
V2_NUMPY_TYPES: dict[str, type[np.generic]] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
PIXELS_TENSOR = "pixels"  # the image kind's input of decoded images: UINT8 [N, height, width, 3]


@dataclass(frozen=True)
class Tensor:
    """A tensor of the Open Inference Protocol: name, datatype, shape (-1: any size)."""

    name: str
    datatype: str  # the protocol's names: "BYTES", "UINT8", "FP32", ...
    shape: tuple[int, ...]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


class Tensors(ABC):
    """One kind's tensors: what a request may send, what a response carries."""

    def __init__(self, task: Task) -> None:
        self.task = task

    @abstractmethod
    def inputs(self, assets: Assets) -> list[Tensor]:
        """The input tensors, batch first; a request sends exactly one of them (they are alternatives: encoded images or pixels)."""

    @abstractmethod
    def outputs(self, metadata: Mapping[str, Any]) -> list[Tensor]:
        """The output tensors, batch first; each is named after the answer field it carries (see `arrays`)."""

    def value(self, tensor: Tensor, element: Any, settings: Settings) -> Any:
        """One element of input `tensor` along the batch dimension -> the raw value the task's `check` takes.

        BYTES elements arrive as `bytes` (binary tensor data) or `str` (JSON); numeric ones as a NumPy array.
        """
        return element

    def arrays(self, answers: Sequence[Answer], metadata: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Answers of one request -> one array per output, from the answer field of the same name.

        A mapping (every class's probability) becomes one column per key, in order; text becomes UTF-8 bytes (BYTES).
        """
        arrays = {}
        for tensor in self.outputs(metadata):
            values = [answer[tensor.name] for answer in answers]
            if tensor.datatype == "BYTES":
                arrays[tensor.name] = np.array([str(v).encode() for v in values], dtype=object)
            else:
                rows = [list(v.values()) if isinstance(v, Mapping) else v for v in values]
                arrays[tensor.name] = np.asarray(rows, dtype=V2_NUMPY_TYPES[tensor.datatype])
        return arrays


class ImageTensors(Tensors):
    def inputs(self, assets: ImageSpec) -> list[Tensor]:
        """Encoded files (decoded here, as the friendly endpoint does), or pixels a client decoded at the version's size."""
        return [Tensor("images", "BYTES", (-1,)), Tensor(PIXELS_TENSOR, "UINT8", (-1, assets.height, assets.width, 3))]

    def outputs(self, metadata: Mapping[str, Any]) -> list[Tensor]:
        return softmax_outputs(metadata)

    def value(self, tensor: Tensor, element: Any, settings: Settings) -> Any:
        """An encoded image is raw bytes in binary tensor data and base64 in JSON (as in the friendly endpoint's JSON)."""
        return element if tensor.name == PIXELS_TENSOR else upload_bytes(element, settings.max_image_bytes)


def softmax_outputs(metadata: Mapping[str, Any]) -> list[Tensor]:
    """What every softmax classifier answers: the label, its score and every class's probability (in metadata's label order)."""
    return [
        Tensor("label", "BYTES", (-1,)),
        Tensor("score", "FP32", (-1,)),
        Tensor("probabilities", "FP32", (-1, len(metadata["labels"]))),
    ]


def utf8(element: Any) -> Any:
    """A BYTES element as text: UTF-8 bytes in binary tensor data, already a string in JSON."""
    if isinstance(element, bytes):
        try:
            return element.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    return element


class TextTensors(Tensors):
    def inputs(self, assets: Any) -> list[Tensor]:
        return [Tensor("texts", "BYTES", (-1,))]

    def outputs(self, metadata: Mapping[str, Any]) -> list[Tensor]:
        return [Tensor("label", "BYTES", (-1,)), Tensor("probability_positive", "FP32", (-1,))]

    def value(self, tensor: Tensor, element: Any, settings: Settings) -> Any:
        """A text is UTF-8 bytes in binary tensor data, a string in JSON."""
        return utf8(element)


class MulticlassTextTensors(TextTensors):
    def outputs(self, metadata: Mapping[str, Any]) -> list[Tensor]:
        return softmax_outputs(metadata)


class TabularTensors(Tensors):
    task: TabularRegression

    def inputs(self, assets: TableEncoder) -> list[Tensor]:
        """FP32 [N, features], the features in the model's order (GET /models); with categorical features,
        BYTES [N] of rows as JSON, as the friendly API takes them (a category is text, which FP32 cannot carry)."""
        if assets.categories:
            return [Tensor("rows", "BYTES", (-1,))]
        return [Tensor("rows", "FP32", (-1, len(assets.feature_names)))]

    def outputs(self, metadata: Mapping[str, Any]) -> list[Tensor]:
        return [Tensor(self.task.answer_field, "FP32", (-1,))]

    def value(self, tensor: Tensor, element: Any, settings: Settings) -> Any:
        if tensor.datatype == "BYTES":
            try:
                return json.loads(utf8(element))
            except ValueError as exc:
                raise InputError(f"is not a row as JSON, an object of named features or a list ({exc})") from None
        return element.tolist()  # Python floats, as JSON rows of the friendly API give `check`


ADAPTERS: dict[type[Task], type[Tensors]] = {
    ImageClassification: ImageTensors,
    TextClassification: TextTensors,
    MulticlassTextClassification: MulticlassTextTensors,
    TabularRegression: TabularTensors,
}


@cache
def v2_tensors(task: Task) -> Tensors:
    """The Open Inference Protocol's adapter for `task`."""
    return for_kind(task, ADAPTERS)(task)

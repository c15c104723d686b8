"""What every model kind must say about itself, in one place.

A task (KServe's `Model` is the nearest anchor) owns everything that differs between
an image classifier, a text classifier and a tabular regressor: what a request item
may be and how it is validated and decoded, how validated items become the model's
input tensor, how its output becomes answers, smoke inputs, batch sizes per
provider, where a table or folder gives it its inputs, and the metric that gates a
redeploy. The HTTP service, the batch scorer, redeploy and the training CLI ask the
task; none of them switches on a model's name or kind.

A task object is configuration (one per catalog entry); what changes from one
version to the next (vocabulary, scaler, image size) is the version's `assets`,
which the task loads from the version directory and is handed back on every call.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel

from service.core.config import Settings
from service.core.errors import UsageError
from service.core.registry import VersionFiles

Answer = dict[str, Any]
Assets = Any  # what a task loads from a version directory (vectoriser, image spec, scaler)

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

# Batch scoring: where the inputs of a model come from.
TABLE = "table"  # one row per input in a CSV, JSONL or Parquet file
FOLDER = "folder"  # one file per input under a folder


@dataclass(frozen=True)
class Gate:
    """The metric that decides whether a retrained version may replace the served one."""

    metric: str
    higher_is_better: bool
    default_tolerance: float

    def passes(self, new: float, current: float, tolerance: float) -> bool:
        return new >= current - tolerance if self.higher_is_better else new <= current + tolerance

    def relation(self, tolerance: float) -> str:
        return f"may be at most {tolerance} {'lower' if self.higher_is_better else 'higher'}"


@dataclass(frozen=True)
class Tensor:
    """A tensor of the Open Inference Protocol (KServe v2, service/http/v2.py): name, datatype, shape (-1: any size)."""

    name: str
    datatype: str  # the protocol's names: "BYTES", "UINT8", "FP32", ...
    shape: tuple[int, ...]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class BatchSizes:
    """Largest onnxruntime batch per kind of provider, chosen by measurement (README, Benchmarks)."""

    cpu: int
    gpu: int


class Task(ABC):
    """One model kind. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]  # "image_classification", ...
    assets_kind: ClassVar[str]  # metadata.json's preprocessing.kind for versions of this task
    request_field: ClassVar[str]  # the friendly API's JSON field ("images", "texts", "rows")
    item_noun: ClassVar[str]  # what one input is called in messages ("image", "text", "row")
    content_types: ClassVar[tuple[str, ...]] = ("application/json",)
    input_source: ClassVar[str] = TABLE
    file_suffixes: ClassVar[tuple[str, ...]] = ()  # FOLDER inputs: which files are inputs
    batch_input_help: ClassVar[str]  # what batch scoring reads for this task (`python -m service.batch --help`)
    gil_bound: ClassVar[bool] = False  # preprocessing holds the GIL: batch scoring uses processes
    gate: ClassVar[Gate]
    batch_sizes: ClassVar[BatchSizes]
    predicts_value: ClassVar[bool] = False  # a regressor's answer is a value, a classifier's a label and probability
    answer_model: type[BaseModel]

    # ------------------------------------------------------------ a version's assets

    @abstractmethod
    def load_assets(self, files: VersionFiles, metadata: Mapping[str, Any]) -> Assets:
        """Read what preprocessing needs from a version directory (`files.read`: regular files inside it, size-bounded)."""

    # ------------------------------------------------------------ items -> tensor -> answers

    @abstractmethod
    def check(self, value: Any, assets: Assets, settings: Settings) -> Any:
        """One raw input (JSON value, image bytes) -> an item for `decode`; InputError otherwise.

        Cheap by contract (no decoding): the HTTP layer runs it on the event loop, per request,
        before any work is admitted.
        """

    def decode(self, item: Any, assets: Assets, settings: Settings) -> Any:
        """A checked item -> one `to_tensor` cannot fail on; InputError when only decoding shows it is bad.

        May be heavy (an image's pixels): the HTTP layer runs it in a worker thread.
        """
        return item

    def validate(self, value: Any, assets: Assets, settings: Settings) -> Any:
        """`check`, then `decode`: one raw input -> an item ready for `to_tensor` (batch scoring, Spark)."""
        return self.decode(self.check(value, assets, settings), assets, settings)

    def max_json_item_bytes(self, settings: Settings) -> int:
        """The most JSON one friendly-API item can take, for a bound on the request checked before it is parsed."""
        return 4096

    def check_request(self, items: Sequence[Any], settings: Settings) -> None:
        """Limits over a whole request's checked items (e.g. a pixel budget); InputError when over."""
        return None

    def cost(self, items: Sequence[Any]) -> int:
        """The decoding work checked items will take, in the unit `pending_limit` bounds (0: not bounded)."""
        return 0

    def pending_limit(self, settings: Settings) -> int:
        """How much decoding work a worker takes on at once for this task (0: no bound)."""
        return 0

    def is_light(self, items: Sequence[Any]) -> bool:
        """Work so small that a hop to a worker thread would cost more than the work itself (well under a millisecond).

        The HTTP layer then runs it on the event loop, where it cannot stall anyone for long.
        """
        return False

    @abstractmethod
    def to_tensor(self, items: Sequence[Any], assets: Assets) -> np.ndarray:
        """Validated items -> the model's input batch."""

    @abstractmethod
    def answers(self, outputs: np.ndarray, assets: Assets, metadata: Mapping[str, Any]) -> list[Answer]:
        """The model's output batch -> one answer per item (without model and version)."""

    def conform(self, items: Sequence[Any], assets: Assets) -> list[Any]:
        """Items validated earlier (by a request schema, or for another version) made fit for this version's input."""
        return list(items)

    # ------------------------------------------------------------ checks before serving

    @abstractmethod
    def smoke_items(self, assets: Assets) -> list[Any]:
        """A few validated items of the right kind, to prove a version answers before it is served."""

    def check_answer(self, answer: Answer) -> str | None:
        """Why an answer is nonsense (None if it is not): every number finite."""
        numbers = [v for v in answer.values() if isinstance(v, float)]
        for value in answer.values():
            if isinstance(value, Mapping):
                numbers += [v for v in value.values() if isinstance(v, float)]
        return None if all(math.isfinite(v) for v in numbers) else "not finite"

    @abstractmethod
    def observation(self, answer: Answer) -> tuple[str | None, float]:
        """(label or None, the answer's number: a probability or a value), for metrics and shadow comparisons."""

    @abstractmethod
    def score(self, answers: Sequence[Answer], targets: Sequence[Any]) -> float:
        """The gate metric of `answers` against the true `targets`."""

    def batch_size(self, gpu: bool) -> int:
        return self.batch_sizes.gpu if gpu else self.batch_sizes.cpu

    # ------------------------------------------------------------ the friendly HTTP API

    @abstractmethod
    def request_item(self, settings: Settings, assets: Callable[[], Assets]) -> Any:
        """The pydantic type of one request item, validated by `check`; `assets()` gives the served version's assets."""

    def describe(self, assets: Assets, metadata: Mapping[str, Any]) -> dict[str, Any]:
        """What a client needs to build a request for this version (GET /models shows it; the playground page reads it)."""
        described = {"field": self.request_field, "item": self.item_noun, "content_types": list(self.content_types)}
        return described | ({"file_suffixes": list(self.file_suffixes)} if self.file_suffixes else {})

    def smoke_request(self, items: Sequence[Any]) -> dict[str, Any]:
        """httpx keyword arguments that send raw `items` to the friendly endpoint (redeploy's smoke test)."""
        return {"json": {self.request_field: list(items)}}

    # ------------------------------------------------------------ the Open Inference Protocol (KServe v2)

    @abstractmethod
    def tensor_inputs(self, assets: Assets) -> list[Tensor]:
        """The v2 input tensors, batch first; a request sends exactly one of them (they are alternatives: encoded images or pixels)."""

    @abstractmethod
    def tensor_outputs(self, metadata: Mapping[str, Any]) -> list[Tensor]:
        """The v2 output tensors, batch first; each is named after the answer field it carries (see `output_arrays`)."""

    def tensor_value(self, tensor: Tensor, element: Any, settings: Settings) -> Any:
        """One element of input `tensor` along the batch dimension -> the raw value `check` takes.

        BYTES elements arrive as `bytes` (binary tensor data) or `str` (JSON); numeric ones as a NumPy array.
        """
        return element

    def output_arrays(self, answers: Sequence[Answer], metadata: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Answers of one request -> one array per v2 output, from the answer field of the same name.

        A mapping (every class's probability) becomes one column per key, in order; text becomes UTF-8 bytes (BYTES).
        """
        arrays = {}
        for tensor in self.tensor_outputs(metadata):
            values = [answer[tensor.name] for answer in answers]
            if tensor.datatype == "BYTES":
                arrays[tensor.name] = np.array([str(v).encode() for v in values], dtype=object)
            else:
                rows = [list(v.values()) if isinstance(v, Mapping) else v for v in values]
                arrays[tensor.name] = np.asarray(rows, dtype=V2_NUMPY_TYPES[tensor.datatype])
        return arrays

    # ------------------------------------------------------------ batch scoring of tables

    def table_columns(self, columns: Sequence[str], assets: Assets, requested: str | None) -> list[str]:
        """The input columns this task reads from a table (UsageError when they are not there)."""
        raise UsageError(f"{self.name} reads a {self.input_source}, not a table")

    def table_value(self, row: Mapping[str, Any], columns: Sequence[str], from_text: bool) -> Any:
        """One table row -> the raw value `validate` takes; `from_text`: cells are CSV text."""
        raise UsageError(f"{self.name} reads a {self.input_source}, not a table")


class ClassificationTask(Task):
    """What classifiers share: answers carry a label and a probability; a redeploy is gated on accuracy."""

    gate = Gate("accuracy", higher_is_better=True, default_tolerance=0.01)
    probability_field: ClassVar[str]  # the answer's probability that metrics and shadow comparisons read

    def observation(self, answer: Answer) -> tuple[str | None, float]:
        return answer["label"], answer[self.probability_field]

    def score(self, answers: Sequence[Answer], targets: Sequence[Any]) -> float:
        """Share of answers whose label is the target's."""
        return float(np.mean([a["label"] == t for a, t in zip(answers, targets, strict=True)]))

"""What a model kind is, whatever way its inputs come in.

A task (KServe's `Model`, with its load, preprocess, predict and postprocess, is the
nearest anchor) owns what differs between an image classifier, a text classifier and
a tabular regressor at their core: a version's assets, what one raw input may be and
how it is checked and decoded, how checked items become the model's input tensor, how
its output becomes answers, smoke inputs, batch sizes per provider, and how an answer
is observed (metrics, shadow comparisons) and scored against the truth.

How each way in maps its own inputs and outputs onto that core lives beside this
module, one module per way in with a thin adapter per kind (LitServe keeps its specs
apart from its LitAPI the same way): friendly.py (the friendly HTTP API), tensors.py
(the Open Inference Protocol's tensors, for REST and any other transport),
batch_inputs.py (tables and folders for batch scoring), gate.py (the metric that
gates a redeploy) and profiles.py (what drift monitoring summarizes of inputs and
answers). Adding a way in adds a module there; no task changes.

A task object is configuration, chosen for a version from its metadata (kinds.py);
what changes from one version to the next (vocabulary, scaler, image size) is the
version's `assets`, which the task loads from the version directory and is handed
back on every call.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

from service.core.config import Settings
from service.core.registry import VersionFiles

Answer = dict[str, Any]
Assets = Any  # what a task loads from a version directory (vectoriser, image spec, scaler)
V = TypeVar("V")


@dataclass(frozen=True)
class BatchSizes:
    """Largest onnxruntime batch per kind of provider, chosen by measurement (README, Benchmarks)."""

    cpu: int
    gpu: int


class Task(ABC):
    """One model kind's core. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]  # "image_classification", ...
    assets_kind: ClassVar[str]  # metadata.json's preprocessing.kind for versions of this task
    item_noun: ClassVar[str]  # what one input is called in messages ("image", "text", "row")
    gil_bound: ClassVar[bool] = False  # preprocessing holds the GIL: batch scoring uses processes
    batch_sizes: ClassVar[BatchSizes]
    predicts_value: ClassVar[bool] = False  # a regressor's answer is a value, a classifier's a label and probability

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

    def fits_inline(self, items: Sequence[Any]) -> bool:
        """Work bounded enough (a few milliseconds) to run on the event loop when it is the worker's only request.

        Nothing else is waiting then, so the loop would only wait for the worker thread.
        """
        return self.is_light(items)

    @abstractmethod
    def to_tensor(self, items: Sequence[Any], assets: Assets) -> np.ndarray:
        """Validated items -> the model's input batch (a graph with one input)."""

    def input_problem(self, inputs: Sequence[Mapping[str, Any]]) -> str | None:
        """Why this kind cannot feed a version whose graph takes `inputs` (metadata's specs); None when it can.

        One input, which `to_tensor` fills, unless a kind knows other layouts.
        """
        return None if len(inputs) == 1 else f"{self.name} feeds one input, the version takes {[i['name'] for i in inputs]}"

    def feed(self, items: Sequence[Any], assets: Assets, inputs: Sequence[str]) -> dict[str, np.ndarray]:
        """Validated items -> the graph's inputs by name, for a version whose graph takes `inputs` (checked by `input_problem`)."""
        return {inputs[0]: self.to_tensor(items, assets)}

    @abstractmethod
    def answers(self, outputs: np.ndarray, assets: Assets, metadata: Mapping[str, Any]) -> list[Answer]:
        """The model's output batch -> one answer per item (without model and version)."""

    def conform(self, items: Sequence[Any], assets: Assets) -> list[Any]:
        """Items validated earlier (by a request schema, or for another version) made fit for this version's input."""
        return list(items)

    def batch_size(self, gpu: bool) -> int:
        return self.batch_sizes.gpu if gpu else self.batch_sizes.cpu

    # ------------------------------------------------------------ checks before serving, and judging answers

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
        """How good `answers` are against the true `targets`, in the metric gate.py names for this kind."""


class ClassificationTask(Task):
    """What classifiers share: answers carry a label and a probability, scored by accuracy."""

    probability_field: ClassVar[str]  # the answer's probability that metrics and shadow comparisons read

    def observation(self, answer: Answer) -> tuple[str | None, float]:
        return answer["label"], answer[self.probability_field]

    def score(self, answers: Sequence[Answer], targets: Sequence[Any]) -> float:
        """Share of answers whose label is the target's."""
        return float(np.mean([a["label"] == t for a, t in zip(answers, targets, strict=True)]))


class SoftmaxClassification(ClassificationTask):
    """Classifiers with one probability per class (a softmax): answers carry the label, its score and every probability."""

    probability_field = "score"

    def answers(self, outputs: np.ndarray, assets: Assets, metadata: Mapping[str, Any]) -> list[Answer]:
        labels = list(metadata["labels"])
        return [
            {"label": labels[int(row.argmax())], "score": float(row.max()), "probabilities": dict(zip(labels, map(float, row)))}
            for row in outputs
        ]

    def check_answer(self, answer: Answer) -> str | None:
        if abs(sum(answer["probabilities"].values()) - 1.0) > 1e-3:
            return "probabilities do not sum to 1"
        return Task.check_answer(self, answer)  # not the next class's: a binary text classifier checks its own field


def for_kind(task: Task, by_kind: Mapping[type[Task], V]) -> V:
    """A way in's entry for `task`: the one for its class, or for the nearest base class listed (all classifiers, say)."""
    for kind in type(task).__mro__:
        if kind in by_kind:
            return by_kind[kind]
    raise TypeError(f"{type(task).__name__} has no entry here; this way in knows {[k.__name__ for k in by_kind]}")

"""Drift monitoring's side of each kind (a way in, like friendly.py): which summaries of an input and of an answer are watched.

One profiler per kind says what is summarized (service/core/drift.py bins and compares
the numbers): a table row's features as they are; a text's length in words and the
share of its words outside the version's vocabulary; an image's width and height as
sent, and the brightness and saturation of the decoded picture. Answers are
summarized the same way for every kind, through the task's `observation`: the
predicted label and its score for classifiers, the predicted value for regressors.

Summaries are made in two steps so that neither slows a request: `capture` runs on
the event loop for a sampled request and keeps only what later steps need and what
decoding would change (an image's size as sent: Pillow's draft mode shrinks a JPEG
while decoding); `summarize` runs later in the drift thread. Nothing of a text or an
image is kept beyond that unless the prediction log is asked to keep raw texts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import cache
from typing import Any, ClassVar

import numpy as np
from PIL import Image, ImageStat

from service.core.preprocessing import ImageSpec, StandardScaler, TextVectorizer, tokenize
from service.core.tasks.base import Answer, Task, for_kind
from service.core.tasks.image_classification import EncodedImage, ImageClassification
from service.core.tasks.tabular_regression import TabularRegression
from service.core.tasks.text_classification import TextClassification

INPUT, OUTPUT = "input", "output"
PREDICTED_LABEL = "predicted_label"
PREDICTED_SCORE = "predicted_score"  # classifiers: the probability the answer carries (top class, or positive)
PREDICTED_VALUE = "predicted_value"  # regressors
STATS_SIZE = 32  # an image's brightness and saturation are measured on a copy about this many pixels high


class Profiler(ABC):
    """One kind's summaries of inputs and answers."""

    held_out_inputs: ClassVar[frozenset[str]] = frozenset()  # input features whose reference comes from the held-out split
    raw_column: ClassVar[str | None] = None  # the prediction log's column for the raw input, where one may be kept

    def __init__(self, task: Task) -> None:
        self.task = task

    @abstractmethod
    def input_names(self, assets: Any) -> list[str]:
        """The input features, in the order `summarize` gives them."""

    def capture(self, items: Sequence[Any]) -> list[Any]:
        """Checked items of a sampled request -> what `summarize` needs. On the event loop: cheap."""
        return list(items)

    @abstractmethod
    def summarize(self, captured: Sequence[Any], assets: Any) -> dict[str, np.ndarray]:
        """Captured items -> one number per item and input feature (NaN where one cannot be had)."""

    def raw_inputs(self, captured: Sequence[Any]) -> list[Any] | None:
        """The raw inputs for the prediction log's `raw_column`, when the kind has one."""
        return None

    def is_categorical(self, name: str) -> bool:
        return name == PREDICTED_LABEL

    def answer_features(self, answers: Sequence[Answer]) -> dict[str, list[Any]]:
        """Answers -> the predicted label (classifiers) and the answer's number, one each per answer."""
        observed = [self.task.observation(answer) for answer in answers]
        number = PREDICTED_VALUE if self.task.predicts_value else PREDICTED_SCORE
        features: dict[str, list[Any]] = {} if self.task.predicts_value else {PREDICTED_LABEL: [label for label, _ in observed]}
        return features | {number: [float(value) for _, value in observed]}


class TabularProfiler(Profiler):
    """Each feature of a row, as sent."""

    def input_names(self, assets: StandardScaler) -> list[str]:
        return list(assets.feature_names)

    def summarize(self, captured: Sequence[np.ndarray], assets: StandardScaler) -> dict[str, np.ndarray]:
        rows = np.asarray(captured, dtype=np.float64).reshape(len(captured), len(assets.feature_names))
        return {name: rows[:, i] for i, name in enumerate(assets.feature_names)}


class TextProfiler(Profiler):
    """Length in words and the share of words outside the version's vocabulary (another language or domain shows there)."""

    held_out_inputs = frozenset({"oov_share"})
    raw_column = "text"  # the column batch scoring reads texts from

    def input_names(self, assets: TextVectorizer) -> list[str]:
        return ["length", "oov_share"]

    def summarize(self, captured: Sequence[str], assets: TextVectorizer) -> dict[str, np.ndarray]:
        lengths, oov = np.zeros(len(captured)), np.zeros(len(captured))
        for i, text in enumerate(captured):
            words = tokenize(text)  # the service's own tokenizer: the words the vocabulary was built from
            lengths[i] = len(words)
            oov[i] = sum(word not in assets.vocabulary for word in words) / len(words) if words else 1.0
        return {"length": lengths, "oov_share": oov}

    def raw_inputs(self, captured: Sequence[str]) -> list[Any] | None:
        return list(captured)


class ImageProfiler(Profiler):
    """Width and height as sent; mean brightness and saturation (0-1) of the picture, measured on a small copy.

    The copy is reduced from the pixels the request decoded (Pillow keeps them on the opened
    image), by Pillow alone: running the model's own resize again cost 1.4 ms a photo here.
    """

    def input_names(self, assets: ImageSpec) -> list[str]:
        return ["width", "height", "brightness", "saturation"]

    def capture(self, items: Sequence[EncodedImage | np.ndarray]) -> list[tuple[int, int, Any]]:
        """(width, height, item): the size from the header, read before decoding shrinks it."""
        return [
            (item.image.width, item.image.height, item) if isinstance(item, EncodedImage) else (item.shape[1], item.shape[0], item)
            for item in items
        ]

    def summarize(self, captured: Sequence[tuple[int, int, Any]], assets: ImageSpec) -> dict[str, np.ndarray]:
        n = len(captured)
        out = {"width": np.zeros(n), "height": np.zeros(n), "brightness": np.full(n, np.nan), "saturation": np.full(n, np.nan)}
        for i, (width, height, item) in enumerate(captured):
            out["width"][i], out["height"][i] = width, height
            try:
                small = small_copy(item)
            except (OSError, ValueError, SyntaxError):  # a file that could not be decoded: no value for it
                continue
            out["brightness"][i] = ImageStat.Stat(small.convert("L")).mean[0] / 255.0  # ITU-R 601 luma
            out["saturation"][i] = ImageStat.Stat(small.convert("HSV")).mean[1] / 255.0  # (max - min) / max per pixel
        return out


def small_copy(item: EncodedImage | np.ndarray) -> Image.Image:
    """An RGB copy of a decoded image, about STATS_SIZE pixels on its shorter side (a request decoded it: `load` finds its pixels)."""
    if isinstance(item, np.ndarray):
        image = Image.fromarray(item)
    else:
        image = item.image
        image.load()
    if image.mode not in ("RGB", "L"):  # palette, alpha, CMYK, 16-bit: as RGB first (Pillow reduces these poorly or not at all)
        image = image.convert("RGB")
    return image.reduce(max(1, min(image.size) // STATS_SIZE)).convert("RGB")


ADAPTERS: dict[type[Task], type[Profiler]] = {
    ImageClassification: ImageProfiler,
    TextClassification: TextProfiler,
    TabularRegression: TabularProfiler,
}


@cache
def profiler(task: Task) -> Profiler:
    """The drift profiler of `task`'s kind."""
    return for_kind(task, ADAPTERS)(task)

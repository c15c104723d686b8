"""Text classification: raw text in; binary (a sigmoid) gives the label and the probability of the second label, multi-class (a softmax) every class's.

A version's graph takes either a dense row per text (`features` [N, V]: versions exported
before sparse input) or the text's n-gram ids and weights (`ids` + `weights` [N, K],
training/sparse_input.py); its metadata's inputs say which, and `feed` builds that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from service.core.config import Settings
from service.core.errors import InputError
from service.core.preprocessing import SPARSE_INPUTS, TextVectorizer, check_text
from service.core.registry import VersionFiles
from service.core.tasks.base import Answer, BatchSizes, ClassificationTask, SoftmaxClassification

# Up to this many characters in a request, tokenising and inference take ~0.2 ms here: less than a thread hop.
LIGHT_REQUEST_CHARS = 2_000
SPARSE_DTYPES = ("int64", "float32")  # of the sparse inputs, ids and weights
SMOKE_TEXTS = ("An absolutely wonderful film, I loved every minute of it.", "A dull, boring and terrible waste of time.")


class TextClassification(ClassificationTask):
    name = "text_classification"
    assets_kind = "text"
    item_noun = "text"
    gil_bound = True  # tokenising is pure Python
    probability_field = "probability_positive"
    batch_sizes = BatchSizes(cpu=64, gpu=64)  # CPU saturates at 64 (benchmarks/results/batch_sizes.md); not measured on a GPU

    def load_assets(self, files: VersionFiles, metadata: Mapping[str, Any]) -> TextVectorizer:
        vocabulary = files.read_json(metadata["preprocessing"]["vocabulary_file"])
        return TextVectorizer.from_json(vocabulary).build_index()  # now, not on the first request

    def check(self, value: Any, assets: Any, settings: Settings) -> str:
        if value is None:
            raise InputError("is missing")
        return check_text(value, settings.max_text_chars)

    def max_json_item_bytes(self, settings: Settings) -> int:
        """A text of MAX_TEXT_CHARS, every character escaped as \\uXXXX (Python's json.dumps does that to non-ASCII)."""
        return settings.max_text_chars * 6 + 64

    def is_light(self, items: Sequence[str]) -> bool:
        return sum(len(text) for text in items) <= LIGHT_REQUEST_CHARS

    def to_tensor(self, items: Sequence[str], assets: TextVectorizer) -> np.ndarray:
        return assets.transform(items)

    def input_problem(self, inputs: Sequence[Mapping[str, Any]]) -> str | None:
        """A dense row (one input), or sparse input: `ids` int64 and `weights` float32, [N, K] each."""
        if tuple(i["name"] for i in inputs) != SPARSE_INPUTS:
            return super().input_problem(inputs)
        dtypes = tuple(i["dtype"] for i in inputs)
        return None if dtypes == SPARSE_DTYPES else f"sparse inputs {list(SPARSE_INPUTS)} must be {list(SPARSE_DTYPES)}, are {list(dtypes)}"

    def feed(self, items: Sequence[str], assets: TextVectorizer, inputs: Sequence[str]) -> dict[str, np.ndarray]:
        if tuple(inputs) == SPARSE_INPUTS:
            return dict(zip(SPARSE_INPUTS, assets.transform_sparse(items), strict=True))
        return super().feed(items, assets, inputs)

    def answers(self, outputs: np.ndarray, assets: Any, metadata: Mapping[str, Any]) -> list[Answer]:
        negative, positive = metadata["labels"]
        threshold = float(metadata["preprocessing"].get("threshold", 0.5))
        return [{"label": positive if p >= threshold else negative, "probability_positive": float(p)} for p in outputs.reshape(-1)]

    def smoke_items(self, assets: Any) -> list[str]:
        return list(SMOKE_TEXTS)

    def check_answer(self, answer: Answer) -> str | None:
        if not 0.0 <= answer["probability_positive"] <= 1.0:
            return "probability outside [0, 1]"
        return super().check_answer(answer)


class MulticlassTextClassification(SoftmaxClassification, TextClassification):
    """More than two labels: the model ends in a softmax, and answers are those of every softmax classifier."""

"""Binary text classification (IMDB sentiment): raw text in, a label and the probability of the positive one out."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import BaseModel, BeforeValidator, Field

from service.core.config import Settings
from service.core.errors import InputError, UsageError
from service.core.preprocessing import TextVectorizer, check_text
from service.core.registry import VersionFiles
from service.core.tasks.base import Answer, BatchSizes, ClassificationTask, Tensor

# Table columns that hold the text, tried in order (any case): training and batch scoring share them.
TEXT_COLUMNS = ("text", "review", "content", "body", "comment", "sentence")
# Up to this many characters in a request, tokenising and inference take ~0.2 ms here: less than a thread hop.
LIGHT_REQUEST_CHARS = 2_000
SMOKE_TEXTS = ("An absolutely wonderful film, I loved every minute of it.", "A dull, boring and terrible waste of time.")


class TextAnswer(BaseModel):
    label: str = Field(description="the predicted label, e.g. 'positive' or 'negative'")
    probability_positive: float = Field(description="model probability of the positive (second) label")
    model: str
    version: int


def pick_column(columns: Sequence[str], requested: str | None, candidates: Sequence[str] = TEXT_COLUMNS) -> str:
    """The text column: `requested` (any case), else the first candidate present, else the only column."""
    by_lower = {c.lower(): c for c in columns}
    if requested is not None:
        if requested.lower() in by_lower:
            return requested if requested in columns else by_lower[requested.lower()]
        raise UsageError(f"no column {requested!r}; columns are {list(columns)}")
    for name in candidates:
        if name in by_lower:
            return by_lower[name]
    if len(columns) == 1:
        return columns[0]
    raise UsageError(f"cannot tell which column to read (looked for {list(candidates)}); columns are {list(columns)}")


class TextClassification(ClassificationTask):
    name = "text_classification"
    assets_kind = "text"
    request_field = "texts"
    item_noun = "text"
    gil_bound = True  # tokenising is pure Python
    batch_input_help = (
        "CSV, JSONL or Parquet; the text column is --text-column, else the first of\n"
        f"{', '.join(TEXT_COLUMNS)} (any case), else the only column"
    )
    probability_field = "probability_positive"
    batch_sizes = BatchSizes(cpu=64, gpu=64)  # CPU saturates at 64 (benchmarks/results/batch_sizes.md); not measured on a GPU
    answer_model: ClassVar[type[BaseModel]] = TextAnswer

    def load_assets(self, files: VersionFiles, metadata: Mapping[str, Any]) -> TextVectorizer:
        return TextVectorizer.from_json(files.read_json(metadata["preprocessing"]["vocabulary_file"]))

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

    def describe(self, assets: Any, metadata: Mapping[str, Any]) -> dict[str, Any]:
        negative, positive = metadata["labels"]
        threshold = float(metadata["preprocessing"].get("threshold", 0.5))
        return super().describe(assets, metadata) | {
            "positive": positive,
            "negative": negative,
            "threshold": threshold,
            "examples": list(SMOKE_TEXTS),
        }

    def request_item(self, settings: Settings, assets: Callable[[], Any]) -> Any:
        return Annotated[str, BeforeValidator(lambda value: self.check(value, None, settings))]

    def table_columns(self, columns: Sequence[str], assets: Any, requested: str | None) -> list[str]:
        try:
            return [pick_column(columns, requested)]
        except UsageError as exc:
            raise UsageError(f"{exc}; name the text column with --text-column") from None

    def table_value(self, row: Mapping[str, Any], columns: Sequence[str], from_text: bool) -> Any:
        return row.get(columns[0])

    def tensor_inputs(self, assets: Any) -> list[Tensor]:
        return [Tensor(self.request_field, "BYTES", (-1,))]

    def tensor_outputs(self, metadata: Mapping[str, Any]) -> list[Tensor]:
        return [Tensor("label", "BYTES", (-1,)), Tensor("probability_positive", "FP32", (-1,))]

    def tensor_value(self, tensor: Tensor, element: Any, settings: Settings) -> Any:
        """A text is UTF-8 bytes in binary tensor data, a string in JSON."""
        if isinstance(element, bytes):
            try:
                return element.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
        return element

"""Batch scoring's side of each kind: where a table or a folder gives it its inputs.

One adapter per kind says whether the kind reads a table (one row per input in a CSV,
JSONL or Parquet file) or a folder (one file per input), which columns or files, and
how a row becomes the raw value the task's `validate` takes. The single-machine
scorer and the Spark engine both ask it (service/batch/).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any, ClassVar

from service.core.errors import UsageError
from service.core.preprocessing import TableEncoder, match_names
from service.core.tasks.base import Assets, Task, for_kind
from service.core.tasks.image_classification import IMAGE_SUFFIXES, ImageClassification
from service.core.tasks.tabular_regression import TabularRegression
from service.core.tasks.text_classification import TextClassification

TABLE = "table"  # one row per input in a CSV, JSONL or Parquet file
FOLDER = "folder"  # one file per input under a folder
# Table columns that hold the text, tried in order (any case): training and batch scoring share them.
TEXT_COLUMNS = ("text", "review", "content", "body", "comment", "sentence")


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


def _csv_number(text: Any) -> Any:
    """A CSV cell as a number; "" is a missing value; text that is no number stays text (and fails validation)."""
    if not isinstance(text, str):
        return text
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return text


class BatchInput:
    """One kind's batch input: a table's columns (the default) or a folder's files."""

    source: ClassVar[str] = TABLE
    file_suffixes: ClassVar[tuple[str, ...]] = ()  # FOLDER inputs: which files are inputs
    help: ClassVar[str]  # what batch scoring reads for this kind (`python -m service.batch --help`)

    def __init__(self, task: Task) -> None:
        self.task = task

    def columns(self, columns: Sequence[str], assets: Assets, requested: str | None) -> list[str]:
        """The input columns this kind reads from a table (UsageError when they are not there)."""
        raise UsageError(f"{self.task.name} reads a {self.source}, not a table")

    def value(self, row: Mapping[str, Any], columns: Sequence[str], from_text: bool) -> Any:
        """One table row -> the raw value the task's `validate` takes; `from_text`: cells are CSV text."""
        raise UsageError(f"{self.task.name} reads a {self.source}, not a table")


class ImageFolder(BatchInput):
    source = FOLDER
    file_suffixes = IMAGE_SUFFIXES
    help = (
        f"a folder, walked recursively in sorted order; files ending in {' '.join(IMAGE_SUFFIXES)}\n"
        'are inputs (any case), names starting with "." are ignored'
    )


class TextColumn(BatchInput):
    help = (
        "CSV, JSONL or Parquet; the text column is --text-column, else the first of\n"
        f"{', '.join(TEXT_COLUMNS)} (any case), else the only column"
    )

    def columns(self, columns: Sequence[str], assets: Any, requested: str | None) -> list[str]:
        try:
            return [pick_column(columns, requested)]
        except UsageError as exc:
            raise UsageError(f"{exc}; name the text column with --text-column") from None

    def value(self, row: Mapping[str, Any], columns: Sequence[str], from_text: bool) -> Any:
        return row.get(columns[0])


class FeatureColumns(BatchInput):
    help = (
        "CSV, JSONL or Parquet with one column per feature (the model's names, any case;\n"
        "a categorical feature holds one of its categories); other columns are ignored"
    )

    def columns(self, columns: Sequence[str], assets: TableEncoder, requested: str | None) -> list[str]:
        if requested:
            raise UsageError(f"--text-column is for text models; {self.task.name} reads feature columns")
        found, missing = match_names(columns, assets.feature_names)
        if missing:
            raise UsageError(f"no column for features {missing}; columns are {list(columns)} (names are case-insensitive)")
        return [found[name] for name in assets.feature_names]

    def value(self, row: Mapping[str, Any], columns: Sequence[str], from_text: bool) -> dict[str, Any]:
        """The feature columns' values; a missing or empty one is left out, so validation names it missing."""
        values = {}
        for column in columns:
            value = row.get(column)
            if from_text:
                value = _csv_number(value)
            if value is not None:
                values[column] = value
        return values


ADAPTERS: dict[type[Task], type[BatchInput]] = {
    ImageClassification: ImageFolder,
    TextClassification: TextColumn,
    TabularRegression: FeatureColumns,
}


@cache
def batch_input(task: Task) -> BatchInput:
    """Batch scoring's adapter for `task`."""
    return for_kind(task, ADAPTERS)(task)

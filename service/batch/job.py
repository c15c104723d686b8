"""A batch job resolved from the command line before any work starts: inputs, outputs, schemas, fingerprint.

What a model reads (a table's text or feature columns, a folder of images) and how a
row becomes the raw value to validate is its task's batch input's business
(service/core/tasks/batch_inputs.py); this module only wires it to the input and
output files.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from service.batch.formats import FileFolder, TableInput, Unreadable, output_format, table_format
from service.batch.state import STATE_VERSION
from service.core.config import Settings
from service.core.errors import UsageError
from service.core.runtime import LoadedModel
from service.core.tasks.batch_inputs import FOLDER, batch_input

Key = int | str
Item = tuple[Key, Any, dict[str, Any]]  # (key, raw value for the scorer, kept input columns)


@dataclass
class Job:
    """Everything resolved from the command line before any work starts."""

    model: LoadedModel
    source: TableInput | FileFolder
    output: Path
    output_format: str
    errors: Path
    errors_format: str
    key_name: str
    items: Callable[[int], Iterator[Item]]  # the inputs from a position on
    schema: pa.Schema
    errors_schema: pa.Schema
    fingerprint: dict[str, Any]
    unit: str

    @property
    def total(self) -> int:
        return self.source.total

    @property
    def folder(self) -> Path | None:
        """The root that folder inputs' keys are relative to (None for tables)."""
        return self.source.root if isinstance(self.source, FileFolder) else None


def _arrow_type(value: Any) -> pa.DataType:
    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int):
        return pa.int64()
    if isinstance(value, float):
        return pa.float64()
    if isinstance(value, dict):
        return pa.struct([pa.field(k, _arrow_type(v)) for k, v in value.items()])
    return pa.string()


def answer_fields(model: LoadedModel) -> list[pa.Field]:
    """Output columns as the model's answers have them, read off a smoke answer, so the two cannot drift."""
    sample = model.predict(model.task.smoke_items(model.assets)[:1])[0]
    return [pa.field(name, _arrow_type(value)) for name, value in sample.items()]


def folder_items(folder: FileFolder) -> Callable[[int], Iterator[Item]]:
    def items(start: int) -> Iterator[Item]:
        for _, relative in folder.files(start):
            yield relative, relative, {}

    return items


def table_items(table: TableInput, model: LoadedModel, columns: list[str], keep: bool) -> Callable[[int], Iterator[Item]]:
    from_text, reader = table.format == "csv", batch_input(model.task)

    def items(start: int) -> Iterator[Item]:
        for number, row in table.rows(start, None if keep else columns):
            value = row if isinstance(row, Unreadable) else reader.value(row, columns, from_text)
            yield number, value, table.kept_values(row) if keep else {}

    return items


def _outputs(args: argparse.Namespace) -> tuple[Path, str, Path, str]:
    output = Path(args.output)
    fmt = output_format(output, args.format)
    errors = Path(args.errors) if args.errors else output.with_name(f"{output.stem}.errors.{'csv' if fmt == 'csv' else 'jsonl'}")
    if errors.resolve() == output.resolve():
        raise UsageError("--errors must differ from OUTPUT")
    for path, what in ((output, "OUTPUT"), (errors, "the errors file")):
        if path.exists() and not path.is_file():  # a folder: every row was scored, then the job failed at the end, every time
            raise UsageError(f"{what} {path} exists and is not a file (a folder?); name a file to write")
        _check_writable(path.parent)
    return output, fmt, errors, output_format(errors)


def _check_writable(folder: Path) -> None:
    """Refuse, before any work, a folder the results cannot be written to (read-only, missing, not a folder)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write to {folder} ({exc.strerror or exc}); OUTPUT and the errors file go there") from None


def _source(
    args: argparse.Namespace, model: LoadedModel
) -> tuple[TableInput | FileFolder, Callable[[int], Iterator[Item]], list[pa.Field], dict[str, Any]]:
    """The input, its items, the kept columns' fields and what about the input the fingerprint records."""
    reader, input_path = batch_input(model.task), Path(args.input)
    if not input_path.exists():
        raise UsageError(f"{input_path}: no such file or folder")
    if reader.source == FOLDER:
        if args.keep_columns or args.text_column:
            raise UsageError(f"--keep-columns and --text-column are for table inputs; {model.name} reads a folder")
        folder = FileFolder(input_path, reader.file_suffixes)
        return folder, folder_items(folder), [], {}
    if input_path.is_dir():
        raise UsageError(f"{input_path} is a folder; {model.name} reads a CSV, JSONL or Parquet file")
    table = TableInput(input_path, table_format(input_path, args.input_format))
    columns = reader.columns(table.columns, model.assets, args.text_column)
    kept = table.kept_fields() if args.keep_columns else []
    return table, table_items(table, model, columns, args.keep_columns), kept, {"columns": columns}


def build_job(args: argparse.Namespace, model: LoadedModel, settings: Settings) -> Job:
    """Resolve paths, formats, the input's columns and the output schema; fingerprint it all for resuming."""
    output, fmt, errors, errors_fmt = _outputs(args)
    source, items, kept_fields, extras = _source(args, model)
    key_name, unit = ("path", model.task.item_noun) if isinstance(source, FileFolder) else ("row", "row")
    key_field = pa.field(key_name, pa.int64() if key_name == "row" else pa.string())
    schema = pa.schema([key_field, *answer_fields(model), *kept_fields])
    errors_schema = pa.schema([key_field, pa.field("reason", pa.string())])
    fingerprint = {
        "state_version": STATE_VERSION,
        "model": model.name,
        "version": model.version,
        "sha256": model.metadata["sha256"],
        "input": source.fingerprint(),
        "output_format": fmt,
        "errors": str(errors.resolve()),
        "keep_columns": bool(args.keep_columns),
        "limits": settings.input_limits(),
        **extras,
    }
    return Job(model, source, output, fmt, errors, errors_fmt, key_name, items, schema, errors_schema, fingerprint, unit)

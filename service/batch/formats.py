"""Files in and out of a batch job: streaming readers of inputs, durable part files, final assembly.

Why a module of its own: the job (job.py, run.py) decides *what* is scored and *when*
work is committed; this module only knows formats. Every reader yields one
record at a time from a given position, so memory stays flat whatever the input
size and a resumed job can start where the last one stopped. Results are written as
small Parquet part files, each made durable (fsync) and renamed into place, and only
at the end assembled into the requested CSV, JSONL or Parquet file; a file torn by a
crash is therefore never one the user sees.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from service.core.errors import UsageError
from service.core.files import replace_with

TABLE_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
OUTPUT_FORMATS = ("csv", "jsonl", "parquet")
KEPT_PREFIX = "input_"  # --keep-columns: input column `id` becomes `input_id`, never clashing with `label` or `row`
PARQUET_READ_ROWS = 4096  # rows per record batch read from a Parquet input
PARQUET_ROW_GROUP_ROWS = 65_536  # the assembled Parquet output's row groups
CSV_FIELD_LIMIT = 2**31 - 1  # the csv module refuses fields over 128 KiB by default; check_text applies the real limit


@dataclass(frozen=True)
class Unreadable:
    """A record the reader could not parse (invalid JSON line, CSV row with the wrong field count)."""

    reason: str


Row = dict[str, Any] | Unreadable


def _format_of(path: Path, explicit: str | None, what: str, hint: str) -> str:
    """csv, jsonl or parquet, from `explicit` or the file suffix."""
    if explicit:
        return explicit
    fmt = TABLE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(f"{path}: cannot tell the {what} from the suffix {path.suffix!r}; {hint}")
    return fmt


def table_format(path: Path, explicit: str | None = None) -> str:
    return _format_of(path, explicit, "format", f"use one of {sorted(TABLE_FORMATS)} or --input-format")


# ---------------------------------------------------------------- tables: CSV, JSONL, Parquet


class TableInput:
    """Rows of a CSV, JSONL or Parquet file as dicts, each with its 0-based row number.

    CSV values are the text as written (an empty field is ""); JSONL values are the
    JSON values (a missing key is absent); Parquet values are the column's Python
    values (null is None). Blank lines in CSV and JSONL are not rows. JSONL columns
    are the keys of the first object in the file.
    """

    def __init__(self, path: Path, fmt: str) -> None:
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
        self.path = path
        self.format = fmt
        if fmt == "parquet":
            try:
                self._parquet = pq.ParquetFile(path)
            except (pa.ArrowException, OSError) as exc:
                raise UsageError(f"{path}: not readable as Parquet ({exc})") from None
            self.arrow_schema: pa.Schema | None = self._parquet.schema_arrow
            self.columns = list(self.arrow_schema.names)
            self.total = self._parquet.metadata.num_rows
        elif fmt == "csv":
            self.arrow_schema = None
            self.columns, self.total = self._scan_csv()
        elif fmt == "jsonl":
            self.arrow_schema = None
            self.columns, self.total = self._scan_jsonl()
        else:
            raise UsageError(f"unknown input format {fmt!r}")

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this input for a resume: path, size, modification time, rows."""
        stat = self.path.stat()
        return {
            "path": str(self.path.resolve()),
            "format": self.format,
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "rows": self.total,
        }

    def kept_fields(self) -> list[pa.Field]:
        """Output fields for --keep-columns: Parquet keeps its types, CSV and JSONL values are text."""
        if self.arrow_schema is not None:
            return [pa.field(KEPT_PREFIX + f.name, f.type) for f in self.arrow_schema]
        return [pa.field(KEPT_PREFIX + c, pa.string()) for c in self.columns]

    def kept_values(self, row: Row) -> dict[str, Any]:
        if isinstance(row, Unreadable):
            return {KEPT_PREFIX + c: None for c in self.columns}
        if self.format == "jsonl":
            return {KEPT_PREFIX + c: as_text(row.get(c)) for c in self.columns}
        return {KEPT_PREFIX + c: row.get(c) for c in self.columns}

    def rows(self, start: int = 0, columns: Sequence[str] | None = None) -> Iterator[tuple[int, Row]]:
        """(row number, row) from row `start` on; a Parquet file reads only `columns` (None: all)."""
        if self.format == "parquet":
            yield from self._parquet_rows(start, columns)
            return
        reader = self._csv_rows() if self.format == "csv" else self._jsonl_rows()
        for number, row in enumerate(reader):
            if number >= start:
                yield number, row

    # -- CSV

    def _open_text(self) -> Any:
        return open(self.path, newline="", encoding="utf-8-sig")  # utf-8-sig: a BOM is not part of the first column name

    def _scan_csv(self) -> tuple[list[str], int]:
        csv.field_size_limit(CSV_FIELD_LIMIT)
        try:
            with self._open_text() as handle:
                reader = csv.reader(handle)
                header = next(reader, None)
                if not header:
                    raise UsageError(f"{self.path}: empty CSV, no header row")
                if len(set(header)) != len(header):
                    raise UsageError(f"{self.path}: the header repeats column names: {header}")
                return header, sum(1 for fields in reader if fields)
        except UnicodeDecodeError as exc:
            raise UsageError(f"{self.path}: not UTF-8 text ({exc})") from None
        except csv.Error as exc:
            raise UsageError(f"{self.path}: not readable as CSV ({exc})") from None

    def _csv_rows(self) -> Iterator[Row]:
        csv.field_size_limit(CSV_FIELD_LIMIT)
        with self._open_text() as handle:
            reader = csv.reader(handle)
            header = next(reader)
            for fields in reader:
                if not fields:
                    continue
                yield csv_row(header, fields)

    # -- JSONL

    def _scan_jsonl(self) -> tuple[list[str], int]:
        columns: list[str] | None = None
        total = 0
        try:
            with open(self.path, encoding="utf-8-sig") as handle:
                for line in handle:
                    if not line.strip():
                        continue
                    total += 1
                    if columns is None:
                        with contextlib.suppress(ValueError, RecursionError):
                            first = json.loads(line)
                            if isinstance(first, dict):
                                columns = [str(k) for k in first]
        except UnicodeDecodeError as exc:
            raise UsageError(f"{self.path}: not UTF-8 text ({exc})") from None
        if total and columns is None:
            raise UsageError(f"{self.path}: no line is a JSON object")
        return columns or [], total

    def _jsonl_rows(self) -> Iterator[Row]:
        with open(self.path, encoding="utf-8-sig") as handle:
            for line in handle:
                if line.strip():
                    yield jsonl_row(line)

    # -- Parquet

    def _parquet_rows(self, start: int, columns: Sequence[str] | None) -> Iterator[tuple[int, Row]]:
        """Skip whole row groups before `start` without reading them."""
        metadata = self._parquet.metadata
        first_group, number = 0, 0
        while first_group < metadata.num_row_groups and number + metadata.row_group(first_group).num_rows <= start:
            number += metadata.row_group(first_group).num_rows
            first_group += 1
        groups = list(range(first_group, metadata.num_row_groups))
        if not groups:
            return
        for batch in self._parquet.iter_batches(
            batch_size=PARQUET_READ_ROWS, row_groups=groups, columns=None if columns is None else list(columns)
        ):
            for row in batch.to_pylist():
                if number >= start:
                    yield number, row
                number += 1


def csv_row(header: Sequence[str], fields: Sequence[str]) -> Row:
    """One CSV record's fields as a row, or why not (the Spark engine applies the same rule to the records Spark cannot fit)."""
    if len(fields) != len(header):
        return Unreadable(f"CSV row has {len(fields)} fields, the header has {len(header)}")
    return dict(zip(header, fields))


def jsonl_row(line: str) -> Row:
    """One non-blank JSONL line as a row, or why not (shared with the Spark engine, which reads the lines as text)."""
    try:
        value = json.loads(line)
    except ValueError as exc:
        return Unreadable(f"line is not valid JSON ({exc})")
    except RecursionError:
        return Unreadable("line is not valid JSON (nested too deeply)")
    return value if isinstance(value, dict) else Unreadable(f"line is a JSON {type(value).__name__}, not an object")


def as_text(value: Any) -> str | None:
    """A JSON value as text for a kept column: strings as they are, anything else as JSON."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


# ---------------------------------------------------------------- image folders


class FileFolder:
    """Input files under a folder, walked recursively in sorted order (by path components).

    Names starting with "." are ignored (hidden files, a job's work folder). Files
    without one of `suffixes` are not inputs; they are counted in `skipped` so the
    job can say so. A corrupt file *with* such a suffix is an input that fails.
    """

    def __init__(self, root: Path, suffixes: tuple[str, ...]) -> None:
        if not root.is_dir():
            raise UsageError(f"{root}: no such folder (this model reads a folder tree of {', '.join(suffixes)} files)")
        self.root = root
        self.suffixes = suffixes
        digest = hashlib.sha256()
        self.total = 0
        self.skipped: list[str] = []
        for relative, path in self._walk(root, ""):
            if not relative.lower().endswith(self.suffixes):
                self.skipped.append(relative)
                continue
            stat = path.stat()
            digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            self.total += 1
        self._digest = digest.hexdigest()

    def fingerprint(self) -> dict[str, Any]:
        """Every input file's relative path, size and modification time, hashed."""
        return {"path": str(self.root.resolve()), "format": "folder", "files": self.total, "listing_sha256": self._digest}

    def files(self, start: int = 0) -> Iterator[tuple[int, str]]:
        """(position, path relative to the root, with "/") from position `start` on."""
        number = 0
        for relative, _ in self._walk(self.root, ""):
            if not relative.lower().endswith(self.suffixes):
                continue
            if number >= start:
                yield number, relative
            number += 1

    def _walk(self, folder: Path, prefix: str) -> Iterator[tuple[str, Path]]:
        with os.scandir(folder) as entries:
            ordered = sorted(entries, key=lambda e: e.name)
        for entry in ordered:
            if entry.name.startswith("."):
                continue
            relative = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path), relative + "/")
            elif entry.is_file():
                yield relative, Path(entry.path)


# ---------------------------------------------------------------- part files and the final output


def write_part(table: pa.Table, path: Path) -> None:
    """Write a Parquet part durably: a temporary file, fsync, then rename into place."""
    replace_with(path, lambda tmp: pq.write_table(table, tmp))


def output_format(path: Path, explicit: str | None = None) -> str:
    return _format_of(path, explicit, "output format", "use .csv, .jsonl or .parquet, or --format")


def assemble(parts: Sequence[Path], schema: pa.Schema, fmt: str, destination: Path) -> int:
    """Concatenate part files, in order, into one CSV/JSONL/Parquet file, replaced atomically; return its rows.

    Reads one part at a time. CSV has nested fields flattened (`probabilities.cats`);
    JSONL and Parquet keep them nested, as the HTTP answer has them.
    """
    writers = {"parquet": _assemble_parquet, "csv": _assemble_csv, "jsonl": _assemble_jsonl}
    if fmt not in writers:
        raise ValueError(f"unknown output format {fmt!r}")
    rows = 0

    def write(tmp: Path) -> None:
        nonlocal rows
        rows = writers[fmt](parts, schema, tmp)

    replace_with(destination, write)
    return rows


def _assemble_csv(parts: Sequence[Path], schema: pa.Schema, tmp: Path) -> int:
    rows = 0
    with pa_csv.CSVWriter(str(tmp), schema.empty_table().flatten().schema) as writer:
        for part in parts:
            table = pq.read_table(part, schema=schema)
            writer.write_table(table.flatten())
            rows += table.num_rows
    return rows


def _assemble_jsonl(parts: Sequence[Path], schema: pa.Schema, tmp: Path) -> int:
    rows = 0
    with open(tmp, "w", encoding="utf-8") as handle:
        for part in parts:
            table = pq.read_table(part, schema=schema)
            handle.writelines(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n" for row in table.to_pylist())
            rows += table.num_rows
    return rows


def _assemble_parquet(parts: Sequence[Path], schema: pa.Schema, tmp: Path) -> int:
    """Re-chunk the small parts into row groups of about PARQUET_ROW_GROUP_ROWS rows."""
    rows = 0
    pending: list[pa.Table] = []
    with pq.ParquetWriter(tmp, schema) as writer:
        for part in parts:
            table = pq.read_table(part, schema=schema)
            pending.append(table)
            rows += table.num_rows
            if sum(t.num_rows for t in pending) >= PARQUET_ROW_GROUP_ROWS:
                writer.write_table(pa.concat_tables(pending), row_group_size=PARQUET_ROW_GROUP_ROWS)
                pending = []
        if pending or rows == 0:
            writer.write_table(pa.concat_tables(pending) if pending else schema.empty_table(), row_group_size=PARQUET_ROW_GROUP_ROWS)
    return rows

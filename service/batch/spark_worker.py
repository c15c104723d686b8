"""What runs inside Spark's Python workers: load a model version once per worker, score Arrow batches with the Scorer.

Why a module of its own, without pyspark at import time: Spark pickles the scoring
function by reference and the executors import this module (from the code zip the
driver ships, or their own install), so it must stay small and importable anywhere
modelserve is. The rules are the single-machine scorer's: `Scorer` validates each raw
value with the model's task and predicts the valid ones with `LoadedModel.predict`,
so a row gets the answer, or the refusal, that the HTTP API and `python -m
service.batch` give it.

Why Arrow batches (`mapInArrow`) and not pandas (`mapInPandas`): the single-machine
scorer's Parquet rows are `RecordBatch.to_pylist()`, and this module makes its rows
with the same call, so a null stays None ("missing features") and a NaN stays NaN
("is nan"). pandas turns both into NaN in a float column and ints with a null into
floats, which would change the reasons; it also skips a conversion per batch.
"""

from __future__ import annotations

import csv
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from service.batch.formats import KEPT_PREFIX, Unreadable, as_text, csv_row, jsonl_row
from service.batch.run import Outcome, Scorer
from service.core.config import Settings
from service.core.errors import ModelLoadError, ModelServeError
from service.core.registry import ModelVersion
from service.core.runtime import LoadedModel, load_model, max_batch_size, resolve_providers
from service.core.tasks.batch_inputs import batch_input

REASON = "reason"  # the combined result's column: None for a scored row, why not for a refused one
CORRUPT_RECORD = "_corrupt_record"  # Spark's CSV reader puts a record it cannot fit to the header here
LINE = "value"  # Spark's text source: one JSONL line
CONTENT = "content"  # Spark's binaryFile source: the file's bytes
EXECUTOR_ERROR = "modelserve executor error: "  # the driver finds this in Spark's exception to print one clear line


@dataclass(frozen=True)
class WorkerPlan:
    """Everything a Python worker needs to score, pickled with the function: small, no session, no DataFrame."""

    name: str
    version: int
    sha256: str  # what the driver verified; the executor's copy must be the same file
    model_dir: str  # a SparkFiles name (shipped) or the version folder as executors see it (shared)
    shipped: bool
    settings: Settings
    intra_op_threads: int
    batch_size: int | None  # --batch-size, else the task's size for the provider each executor gets
    source: str  # "csv", "jsonl", "parquet" or "folder"
    columns: tuple[str, ...] = ()  # the input columns the task reads (text or feature columns)
    header: tuple[str, ...] = ()  # CSV: every column of the header (a record is checked against all of them)
    jsonl_columns: tuple[str, ...] = ()  # JSONL with --keep-columns: the first object's keys, kept as text
    keys: tuple[str, ...] = ()  # key columns passed through ("row", "file" + "row", or "path")
    kept: tuple[str, ...] = ()  # input columns passed through (CSV, Parquet); the frame names them input_<name> already
    answers: pa.Schema = field(default_factory=lambda: pa.schema([]))

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        fields = [input_schema.field(k) for k in self.keys]
        fields += list(self.answers)
        fields += [input_schema.field(KEPT_PREFIX + c) for c in self.kept]
        fields += [pa.field(KEPT_PREFIX + c, pa.string()) for c in self.jsonl_columns]
        return pa.schema([*fields, pa.field(REASON, pa.string())])


# Sessions by (sha256, where the files are, threads, providers), for the life of this Python worker: a job that names
# another copy of the same version (--executor-model-root) has that copy verified, not a session loaded from elsewhere.
_models: dict[tuple[str, str, bool, int, tuple[str, ...]], LoadedModel] = {}


def scorer_for(plan: WorkerPlan) -> tuple[Scorer, int]:
    """A Scorer on the worker's session for the plan's version (loaded, checksummed and smoke-checked on first use), and its batch size.

    The session is what is cached; the Scorer is made per task from the plan, so a later
    job in the same session (a notebook) with other MODELSERVE_* limits gets its own.
    """
    key = (plan.sha256, plan.model_dir, plan.shipped, plan.intra_op_threads, plan.settings.providers)
    model = _models.get(key)
    if model is None:
        model = _models[key] = load_version(plan)
    size = plan.batch_size or max_batch_size(plan.settings, plan.name, model.task, model.providers)
    return Scorer(model, plan.settings), size


def load_version(plan: WorkerPlan) -> LoadedModel:
    where = f"{plan.name} v{plan.version} on {socket.gethostname()}"
    try:
        path = _shipped_dir(plan.model_dir) if plan.shipped else Path(plan.model_dir)
        providers = resolve_providers(plan.settings.providers)
        model = load_model(
            ModelVersion(plan.name, plan.version, path),
            providers,
            plan.intra_op_threads,
            int8=plan.settings.int8,
            int8_bounds=plan.settings.int8_bounds(),
        )
        if model.metadata["sha256"] != plan.sha256:
            raise ModelLoadError(
                f"{path} holds a different model.onnx (sha256 {model.metadata['sha256'][:12]}...) "
                f"than the driver verified ({plan.sha256[:12]}...)"
            )
    except ModelServeError as exc:  # Spark shows the traceback's last line; make it say what and where
        raise RuntimeError(f"{EXECUTOR_ERROR}{where}: {exc}") from None
    return model


def _shipped_dir(name: str) -> Path:
    from pyspark import SparkFiles  # only where the files were shipped with the job

    return Path(SparkFiles.get(name))


def _named(batch: pa.RecordBatch, names: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of the input columns `names` (input_<name> in the frame) as dicts keyed by the input's own names."""
    columns = [batch.column(KEPT_PREFIX + n) for n in names]
    return pa.RecordBatch.from_arrays(columns, names=list(names)).to_pylist()


def raw_values(plan: WorkerPlan, scorer: Scorer, batch: pa.RecordBatch) -> tuple[list[Any], list[dict[str, Any]]]:
    """The raw value the task validates for each row (as the single-machine readers make it), and JSONL's kept columns."""
    reader = batch_input(scorer.model.task)
    if plan.source == "folder":
        return batch.column(CONTENT).to_pylist(), []
    if plan.source == "jsonl":
        rows = [jsonl_row(line.lstrip("\ufeff")) for line in batch.column(LINE).to_pylist()]
        kept = [{KEPT_PREFIX + c: None if isinstance(r, Unreadable) else as_text(r.get(c)) for c in plan.jsonl_columns} for r in rows]
        values = [r if isinstance(r, Unreadable) else reader.value(r, plan.columns, False) for r in rows]
        return values, kept
    if plan.source == "csv":
        corrupt = batch.column(CORRUPT_RECORD).to_pylist()
        rows = _named(batch, plan.header)
        values = [
            reader.value(row, plan.columns, True) if bad is None else _csv_reason(plan.header, bad) for row, bad in zip(rows, corrupt)
        ]
        return values, []
    return [reader.value(row, plan.columns, False) for row in _named(batch, plan.columns)], []


def _csv_reason(header: Sequence[str], record: str) -> Unreadable:
    """The single-machine reader's reason for a record with the wrong number of fields."""
    fields = next(csv.reader([record]), [])
    row = csv_row(header, fields)
    return row if isinstance(row, Unreadable) else Unreadable(f"CSV row could not be read: {record[:200]!r}")


def outcome_arrays(plan: WorkerPlan, outcomes: Sequence[Outcome]) -> list[pa.Array]:
    """Answer columns (null for a refused row) and the reason column (null for a scored row)."""
    answers = [o if isinstance(o, dict) else None for o in outcomes]
    arrays = [pa.array([a[f.name] if a is not None else None for a in answers], type=f.type) for f in plan.answers]
    return [*arrays, pa.array([o if isinstance(o, str) else None for o in outcomes], pa.string())]


def score_batches(plan: WorkerPlan, counter: Any, files: Any, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow's function: one output row per input row, in order: keys, answers, kept columns, reason.

    `counter` is a Spark accumulator (rows done, for the driver's progress line), or None;
    `files` one of what each executor ran (its host, the file and why: the INT8 variant is
    checked on each executor's CPU), counted per task, or None.
    """
    scorer, size = scorer_for(plan)
    if files is not None:
        files.add({f"{socket.gethostname()}: {scorer.model.model_file.summary()}": 1})
    for batch in batches:
        values, jsonl_kept = raw_values(plan, scorer, batch)
        outcomes: list[Outcome] = []
        for start in range(0, len(values), size):
            outcomes += scorer.score(values[start : start + size])
        *answers, reasons = outcome_arrays(plan, outcomes)
        arrays = [batch.column(k) for k in plan.keys]
        arrays += answers
        arrays += [batch.column(KEPT_PREFIX + c) for c in plan.kept]
        arrays += [pa.array([k[KEPT_PREFIX + c] for k in jsonl_kept], pa.string()) for c in plan.jsonl_columns]
        arrays.append(reasons)
        if counter is not None:
            counter.add(len(values))
        yield pa.RecordBatch.from_arrays(arrays, schema=plan.output_schema(batch.schema))

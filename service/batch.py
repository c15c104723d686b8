"""Offline batch scoring with the serving runtime, no HTTP: `python -m service.batch MODEL INPUT -o OUTPUT`.

Why it reuses the service's pieces instead of its own: the version is resolved like
the service does (CURRENT, or an explicit one), loaded by `runtime.load_model`
(checksum, smoke check), every item is validated by the functions behind the
service's request schemas (`check_text`, `decode_image`, `feature_row`) with the
same `MODELSERVE_*` limits, and predicted by `LoadedModel.predict`; so a row's
answer here is the answer the HTTP API gives for it.

Work flows reader -> pool of workers (validate + predict a batch) -> writer. The
reader and the writer stay in this process; the workers are threads or processes (see choose_executor).
Results are committed in chunks: a Parquet part file made durable, then a small
state file (atomic rename) recording how many inputs are done and with which
arguments. A job stopped any way at all restarts from the last commit, and the
final file is assembled from the parts only when every input is in one.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pyarrow as pa
from tqdm import tqdm

from service.batch_io import (
    OUTPUT_FORMATS,
    TEXT_COLUMNS,
    BatchInputError,
    ImageFolder,
    TableInput,
    Unreadable,
    assemble,
    feature_columns,
    find_column,
    fsync_dir,
    output_format,
    table_format,
    write_part,
)
from service.config import ConfigError, Settings
from service.preprocessing import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImagePreprocessor,
    InputError,
    TabularPreprocessor,
    TextPreprocessor,
    check_text,
    decode_image,
    feature_row,
)
from service.registry import ModelVersion, Registry, RegistryError
from service.runtime import LoadedModel, ModelLoadError, load_model, resolve_providers

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ROWS_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
DEFAULT_CHUNK_SIZE = 1024  # inputs per committed part: what a crash can cost, and the cost of one commit
IN_FLIGHT_PER_WORKER = 2  # batches queued per worker: enough to keep it busy, few enough to keep memory flat
PROGRESS_EVERY_S = 10.0  # a progress line this often when stderr is not a terminal
PARENT_POLL_S = 1.0  # how often a worker process checks that the job still runs
STATE_VERSION = 1
STATE_FILE = "state.json"
LOCK_FILE = "lock"
PART_NAME = "part-{:06d}.parquet"
ERRORS_PART_NAME = "errors-{:06d}.parquet"

EPILOG = """\
models and inputs:
  text models (imdb_sentiment)     CSV, JSONL or Parquet; the text column is --text-column,
                                   else the first of text, review, content, body, comment,
                                   sentence (any case), else the only column
  tabular models (boston_housing)  CSV, JSONL or Parquet with one column per feature
                                   (CRIM ... LSTAT, any case); other columns are ignored
  image models (image_classifier)  a folder, walked recursively in sorted order; files with
                                   an image suffix (.jpg .jpeg .png .webp .bmp .gif) are
                                   inputs, names starting with "." are ignored

output:
  One row per scored input: its key (`row`, the 0-based row number, or `path`, the
  image's path relative to INPUT), the prediction fields of the HTTP API, `model` and
  `version`, and with --keep-columns the input's columns as input_<name>. Inputs that
  cannot be scored go to the errors file with their key and the reason, and the job
  goes on; by default the errors file is beside OUTPUT: scores.csv -> scores.errors.csv,
  scores.jsonl or scores.parquet -> scores.errors.jsonl.

settings:
  The service's MODELSERVE_* variables apply here too: MODEL_ROOT, PROVIDERS,
  INTRA_OP_THREADS and the input limits MAX_TEXT_CHARS, MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS.

resuming:
  Progress is committed every --chunk-size inputs to .OUTPUT.batch/ beside OUTPUT.
  Run the same command again after Ctrl-C, a kill or a crash and it continues where
  it stopped; the result has every input exactly once. Changed arguments, input or
  model version are refused unless --restart is given.

exit status:
  0    every input scored
  3    finished, but some inputs failed (see the errors file)
  2    usage error: bad arguments, missing input or column, unknown model or version,
       OUTPUT exists, saved progress does not match
  1    the model could not be loaded, or the job failed (rerun to resume)
  130  interrupted (rerun to resume)
"""

Outcome = dict[str, Any] | str  # an answer, or why the input was not scored
Key = int | str
Item = tuple[Key, Any, dict[str, Any]]  # (key, raw item for the scorer, kept input columns)


class UsageError(ValueError):
    """The command line asks for something that cannot be done as given."""


class Interrupted(Exception):
    """SIGINT or SIGTERM: stop, keep what is committed."""


# ---------------------------------------------------------------- validation and prediction (runs in the workers)


@dataclass
class Scorer:
    """Validate raw inputs like the service's request schemas, then predict the valid ones in one call."""

    model: LoadedModel
    settings: Settings
    image_root: Path | None = None

    def score(self, values: Sequence[Any]) -> list[Outcome]:
        outcomes: list[Outcome] = [""] * len(values)
        positions, items = [], []
        for i, value in enumerate(values):
            try:
                items.append(self.validate(value))
                positions.append(i)
            except InputError as exc:
                outcomes[i] = str(exc)
        for i, answer in zip(positions, self.model.predict(items), strict=True):
            outcomes[i] = answer
        return outcomes

    def validate(self, value: Any) -> Any:
        if isinstance(value, Unreadable):
            raise InputError(value.reason)
        pre = self.model.preprocessor
        if isinstance(pre, TextPreprocessor):
            if value is None:
                raise InputError("text is missing")
            try:
                return check_text(value, self.settings.max_text_chars)
            except InputError as exc:
                raise InputError(f"text {exc}") from None
        if isinstance(pre, ImagePreprocessor):
            return self._image(value, pre)
        assert isinstance(pre, TabularPreprocessor)
        return feature_row(value, pre.scaler.feature_names)

    def _image(self, relative: str, pre: ImagePreprocessor) -> Any:
        """Read at most the byte limit (+1 to notice more), then decode as the service does."""
        assert self.image_root is not None
        limit = self.settings.max_image_bytes
        try:
            with open(self.image_root / relative, "rb") as handle:
                data = handle.read(limit + 1)
        except OSError as exc:
            raise InputError(f"image cannot be read ({exc.strerror})") from None
        if len(data) > limit:
            raise InputError(f"image is larger than the limit of {limit:,} bytes")
        try:
            return decode_image(data, pre.spec, self.settings.max_image_pixels or DEFAULT_MAX_IMAGE_PIXELS)
        except InputError as exc:
            raise InputError(f"image {exc}") from None
        except Exception as exc:  # a decoder failure decode_image does not anticipate: this file fails, the job goes on
            raise InputError(f"image could not be decoded ({type(exc).__name__}: {exc})") from None


_worker_scorer: Scorer | None = None


def _start_worker(ref: ModelVersion, providers: list[str], threads: int, settings: Settings, image_root: Path | None, parent: int) -> None:
    """Process-pool initializer: load the model in this process; leave Ctrl-C to the parent."""
    global _worker_scorer
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    _worker_scorer = Scorer(load_model(ref, providers, threads), settings, image_root)


def _exit_with_parent(parent: int) -> None:
    """A job killed with SIGKILL cannot stop its pool; its workers notice and leave."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def _score_in_worker(values: list[Any]) -> list[Outcome]:
    assert _worker_scorer is not None
    return _worker_scorer.score(values)


# ---------------------------------------------------------------- the job's inputs and outputs


@dataclass
class Job:
    """Everything resolved from the command line before any work starts."""

    model: LoadedModel
    source: TableInput | ImageFolder
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
    """Output columns as LoadedModel.postprocess makes them, read off a smoke answer, so the two cannot drift."""
    sample = model.predict(model.smoke_inputs()[:1])[0]
    return [pa.field(name, _arrow_type(value)) for name, value in sample.items()]


def _csv_number(text: str) -> float | str | None:
    """A CSV cell as a number; "" is a missing value, text that is no number stays text (and fails validation)."""
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _features(row: dict[str, Any], names: Sequence[str], from_csv: bool) -> dict[str, Any]:
    """The features by name (any case); a missing or empty value is left out, so feature_row names it missing."""
    by_upper = {str(k).upper(): v for k, v in row.items()}
    values = {}
    for name in names:
        value = by_upper.get(name.upper())
        if value is not None and from_csv:
            value = _csv_number(value)
        if value is not None:
            values[name] = value
    return values


def image_items(folder: ImageFolder) -> Callable[[int], Iterator[Item]]:
    def items(start: int) -> Iterator[Item]:
        for _, relative in folder.files(start):
            yield relative, relative, {}

    return items


def table_items(table: TableInput, value_of: Callable[[dict[str, Any]], Any], columns: list[str] | None, keep: bool) -> Callable[[int], Iterator[Item]]:
    def items(start: int) -> Iterator[Item]:
        for number, row in table.rows(start, columns):
            value = row if isinstance(row, Unreadable) else value_of(row)
            yield number, value, table.kept_values(row) if keep else {}

    return items


def build_job(args: argparse.Namespace, model: LoadedModel, settings: Settings) -> Job:
    """Resolve paths, formats, the input's columns and the output schema; fingerprint it all for resuming."""
    pre = model.preprocessor
    input_path = Path(args.input)
    output = Path(args.output)
    fmt = output_format(output, args.format)
    errors = Path(args.errors) if args.errors else output.with_name(f"{output.stem}.errors.{'csv' if fmt == 'csv' else 'jsonl'}")
    errors_fmt = output_format(errors)
    if errors.resolve() == output.resolve():
        raise UsageError("--errors must differ from OUTPUT")
    if not input_path.exists():
        raise UsageError(f"{input_path}: no such file or folder")
    kept_fields: list[pa.Field] = []
    extras: dict[str, Any] = {}

    if isinstance(pre, ImagePreprocessor):
        if args.keep_columns or args.text_column:
            raise UsageError("--keep-columns and --text-column are for table inputs, not image folders")
        source: TableInput | ImageFolder = ImageFolder(input_path)
        key_name, unit, items = "path", "image", image_items(source)
    else:
        if input_path.is_dir():
            raise UsageError(f"{input_path} is a folder; {model.name} reads a CSV, JSONL or Parquet file")
        source = table = TableInput(input_path, table_format(input_path, args.input_format))
        if args.keep_columns:
            kept_fields = table.kept_fields()
        if isinstance(pre, TextPreprocessor):
            column = extras["text_column"] = find_column(table.columns, args.text_column, TEXT_COLUMNS)
            needed = [column]
            value_of: Callable[[dict[str, Any]], Any] = lambda row: row.get(column)  # noqa: E731
        else:
            assert isinstance(pre, TabularPreprocessor)
            if args.text_column:
                raise UsageError(f"--text-column is for text models; {model.name} reads feature columns")
            names, from_csv = pre.scaler.feature_names, table.format == "csv"
            needed = list(feature_columns(table.columns, names).values())
            value_of = lambda row: _features(row, names, from_csv)  # noqa: E731
        key_name, unit = "row", "row"
        items = table_items(table, value_of, None if args.keep_columns else needed, args.keep_columns)

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
        "limits": {"max_text_chars": settings.max_text_chars, "max_image_bytes": settings.max_image_bytes, "max_image_pixels": settings.max_image_pixels},
        **extras,
    }
    return Job(model, source, output, fmt, errors, errors_fmt, key_name, items, schema, errors_schema, fingerprint, unit)


# ---------------------------------------------------------------- resumable state


@dataclass
class State:
    """What is committed: inputs [0, position) are in part files 0 .. parts-1, each exactly once."""

    fingerprint: dict[str, Any]
    parts: int = 0
    position: int = 0
    scored: int = 0
    failed: int = 0
    complete: bool = False

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1) + "\n"


class WorkDir:
    """`.OUTPUT.batch/` beside the output: part files, state.json and a lock against a second job."""

    def __init__(self, output: Path) -> None:
        self.path = output.parent / f".{output.name}.batch"
        self._lock: TextIO | None = None

    @property
    def state_path(self) -> Path:
        return self.path / STATE_FILE

    def part(self, index: int) -> Path:
        return self.path / PART_NAME.format(index)

    def errors_part(self, index: int) -> Path:
        return self.path / ERRORS_PART_NAME.format(index)

    def lock(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path / LOCK_FILE, "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"another batch job is writing {self.path.parent} (lock held on {self.path / LOCK_FILE})") from None

    def load(self) -> State | None:
        try:
            return State(**json.loads(self.state_path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise UsageError(f"{self.state_path} is unreadable ({exc}); pass --restart to start over") from None

    def save(self, state: State) -> None:
        """Atomic: a reader sees the old state or the new one, never half of one."""
        tmp = self.path / f".{STATE_FILE}.tmp"
        with open(tmp, "w") as handle:
            handle.write(state.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.state_path)
        fsync_dir(self.path)

    def clear(self) -> None:
        """Forget all progress (keeps the lock file, which this job holds)."""
        for path in self.path.iterdir():
            if path.name != LOCK_FILE:
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    def discard_uncommitted(self, parts: int) -> None:
        """Remove part files written after the last commit (a job stopped between part and state)."""
        for path in self.path.iterdir():
            if path.name.endswith(".tmp"):
                path.unlink()
            elif path.suffix == ".parquet" and int(path.stem.rpartition("-")[2]) >= parts:
                path.unlink()

    def remove(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        shutil.rmtree(self.path, ignore_errors=True)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            out += _differences(old, new, f"{prefix}{key}.")
        elif old != new:
            out.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return out


def open_state(job: Job, work: WorkDir, restart: bool) -> State:
    """Resume the saved state when it matches this job; refuse when it does not (unless restarting)."""
    work.lock()
    if restart:
        work.clear()
    saved = work.load()
    if saved is None:
        if job.output.exists() and not restart:
            raise UsageError(f"{job.output} exists; pass --overwrite to replace it")
        state = State(job.fingerprint)
        work.discard_uncommitted(0)
        work.save(state)
        return state
    changes = _differences(saved.fingerprint, job.fingerprint)
    if changes:
        raise UsageError(
            f"saved progress in {work.path} ({saved.position:,} inputs done) was made with other arguments, input or model: "
            + "; ".join(changes)
            + ". Rerun the original command to resume, or pass --restart to start over."
        )
    work.discard_uncommitted(saved.parts)
    return saved


# ---------------------------------------------------------------- progress


class Progress:
    """A tqdm bar on a terminal; otherwise a plain line every PROGRESS_EVERY_S seconds (logs, CI).

    The plain line's rate counts from the first commit, so that starting the
    workers (seconds, for processes) does not drag the ETA for the whole run.
    """

    def __init__(self, job: Job, state: State, stream: TextIO) -> None:
        self.label = f"{job.model.name} v{job.model.version}"
        self.unit = job.unit
        self.total = job.total
        self.done = state.position
        self.failed = state.failed
        self.stream = stream
        self.started: float | None = None
        self.start_done = state.position
        self.last_line = time.monotonic()
        self.bar: tqdm | None = None
        if stream.isatty():
            self.bar = tqdm(total=self.total, initial=self.done, unit=self.unit, desc=self.label, file=stream, dynamic_ncols=True, smoothing=0.1)
            self.bar.set_postfix(failed=self.failed, refresh=False)

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started if self.started is not None else 0.0
        return (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0

    def advance(self, inputs: int, failed: int) -> None:
        self.done += inputs
        self.failed += failed
        if self.started is None:
            self.started, self.start_done = time.monotonic(), self.done
        if self.bar is not None:
            self.bar.set_postfix(failed=self.failed, refresh=False)
            self.bar.update(inputs)
            return
        now = time.monotonic()
        if now - self.last_line >= PROGRESS_EVERY_S:
            self.last_line = now
            self.line()

    def line(self) -> None:
        rate = self.rate
        eta = f"{(self.total - self.done) / rate:,.0f} s" if rate > 0 else "?"
        share = 100.0 * self.done / self.total if self.total else 100.0
        print(f"{self.label}: {self.done:,}/{self.total:,} {self.unit}s ({share:.1f}%), {rate:,.0f} {self.unit}s/s, {self.failed:,} failed, ETA {eta}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------- the run


@dataclass
class Pending:
    keys: list[Key]
    kept: list[dict[str, Any]]
    future: Future[list[Outcome]]


@dataclass
class Chunk:
    """Results waiting to be committed as one part."""

    keys: list[Key] = field(default_factory=list)
    kept: list[dict[str, Any]] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)


def _batches(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def commit(job: Job, work: WorkDir, state: State, chunk: Chunk) -> tuple[int, int]:
    """Write the chunk as part files, then record it in the state; return (inputs, failed)."""
    rows, errors = [], []
    for key, kept, outcome in zip(chunk.keys, chunk.kept, chunk.outcomes, strict=True):
        if isinstance(outcome, str):
            errors.append({job.key_name: key, "reason": outcome})
        else:
            rows.append({job.key_name: key, **outcome, **kept})
    write_part(pa.Table.from_pylist(rows, schema=job.schema), work.part(state.parts))
    if errors:
        write_part(pa.Table.from_pylist(errors, schema=job.errors_schema), work.errors_part(state.parts))
    state.parts += 1
    state.position += len(chunk.keys)
    state.scored += len(rows)
    state.failed += len(errors)
    work.save(state)
    return len(chunk.keys), len(errors)


def session_threads(args: argparse.Namespace, settings: Settings) -> int:
    """onnxruntime threads per session: MODELSERVE_INTRA_OP_THREADS, else the cores shared among the workers."""
    return settings.intra_op_threads or max(1, len(os.sched_getaffinity(0)) // args.workers)


def choose_executor(args: argparse.Namespace, ref: ModelVersion) -> str:
    """--executor auto: processes for text models, threads for the others.

    Measured on 2 cores (benchmarks/results/batch.md): text preprocessing (tokenising,
    TF-IDF) is pure Python and holds the GIL, so two threads score no faster than one
    while two processes score 1.5-1.7x faster on 30,000+ rows. Pillow's decoding and
    onnxruntime release the GIL, so for images threads keep up with processes at half
    the memory and without the processes' start-up; feature rows are too cheap to care.
    """
    if args.executor != "auto":
        return str(args.executor)
    text = ref.read_metadata().get("preprocessing", {}).get("kind") == "text"
    return "process" if text and args.workers > 1 else "thread"


def make_pool(args: argparse.Namespace, job: Job, settings: Settings, providers: list[str]) -> tuple[Executor, Callable[[list[Any]], list[Outcome]]]:
    """Threads sharing the job's session, or processes with a session each."""
    image_root = job.source.root if isinstance(job.source, ImageFolder) else None
    if args.executor == "thread":
        scorer = Scorer(job.model, settings, image_root)
        return ThreadPoolExecutor(args.workers, thread_name_prefix="score"), scorer.score
    threads = session_threads(args, settings)
    pool = ProcessPoolExecutor(
        args.workers,
        mp_context=multiprocessing.get_context("spawn"),  # never fork a process that runs onnxruntime threads
        initializer=_start_worker,
        initargs=(job.model.version_ref, providers, threads, settings, image_root, os.getpid()),
    )
    return pool, _score_in_worker


def run(args: argparse.Namespace, job: Job, work: WorkDir, state: State, settings: Settings, providers: list[str], stream: TextIO) -> None:
    """Score inputs from state.position on, committing every --chunk-size inputs."""
    progress = Progress(job, state, stream)
    pool, task = make_pool(args, job, settings, providers)
    pending: deque[Pending] = deque()
    chunk = Chunk()

    def collect() -> None:
        nonlocal chunk
        done = pending.popleft()
        chunk.keys += done.keys
        chunk.kept += done.kept
        chunk.outcomes += done.future.result()
        if len(chunk.keys) >= args.chunk_size:
            progress.advance(*commit(job, work, state, chunk))
            chunk = Chunk()

    try:
        for batch in _batches(job.items(state.position), args.batch_size):
            future = pool.submit(task, [value for _, value, _ in batch])
            pending.append(Pending([key for key, _, _ in batch], [kept for _, _, kept in batch], future))
            if len(pending) >= args.workers * IN_FLIGHT_PER_WORKER:
                collect()
        while pending:
            collect()
        if chunk.keys:
            progress.advance(*commit(job, work, state, chunk))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        progress.close()
    if state.position != job.total:
        raise RuntimeError(f"read {state.position:,} inputs, expected {job.total:,}: did the input change while the job ran?")


def finish(job: Job, work: WorkDir, state: State) -> None:
    """Assemble the committed parts into the errors file and OUTPUT, then drop the work folder."""
    state.complete = True
    work.save(state)
    errors = [p for p in map(work.errors_part, range(state.parts)) if p.exists()]
    failed = assemble(errors, job.errors_schema, job.errors_format, job.errors)
    scored = assemble([work.part(i) for i in range(state.parts)], job.schema, job.output_format, job.output)
    if (scored, failed) != (state.scored, state.failed):
        raise RuntimeError(f"assembled {scored} rows and {failed} errors, the state says {state.scored} and {state.failed}")
    work.remove()


# ---------------------------------------------------------------- command line


def positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m service.batch",
        description="Score a file or folder offline with a registry model, exactly as the HTTP service would answer.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="registry model name: imdb_sentiment, boston_housing, image_classifier, ...")
    parser.add_argument("input", help="CSV/JSONL/Parquet file (text and tabular models) or folder of images (image models)")
    parser.add_argument("-o", "--output", required=True, help="result file; .csv, .jsonl or .parquet (or --format)")
    parser.add_argument("--version", type=positive, help="model version (default: the registry's CURRENT, as served)")
    parser.add_argument("--errors", help="file for inputs that could not be scored, .csv/.jsonl/.parquet (default: beside OUTPUT, see below)")
    parser.add_argument("--format", choices=OUTPUT_FORMATS, help="output format when OUTPUT's suffix does not say")
    parser.add_argument("--input-format", choices=OUTPUT_FORMATS, help="input format when INPUT's suffix does not say")
    parser.add_argument("--text-column", help="column holding the text (text models)")
    parser.add_argument("--keep-columns", action="store_true", help="copy the input's columns into the output as input_<name>")
    parser.add_argument("--batch-size", type=positive, help="inputs per onnxruntime call (default: the service's batch size for the model)")
    parser.add_argument("--chunk-size", type=positive, default=DEFAULT_CHUNK_SIZE, help=f"inputs per committed part; a crash loses at most this much work (default {DEFAULT_CHUNK_SIZE})")
    parser.add_argument("--workers", type=positive, default=len(os.sched_getaffinity(0)), help="parallel workers (default: one per core)")
    parser.add_argument(
        "--executor", choices=("auto", "thread", "process"), default="auto",
        help="workers are threads sharing one session, or processes with one each; auto (default): processes for text models, threads for the others",
    )  # fmt: skip
    parser.add_argument("--model-root", type=Path, help="registry root (default: MODELSERVE_MODEL_ROOT, else models)")
    parser.add_argument("--restart", "--overwrite", dest="restart", action="store_true", help="discard saved progress and replace an existing OUTPUT")
    return parser.parse_args(argv)


def _interrupt(signum: int, frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None, stream: TextIO | None = None) -> int:
    args = parse_args(argv)
    err = stream or sys.stderr
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    registry = Registry(args.model_root or settings.model_root)
    try:
        if args.model not in registry.model_names():
            raise UsageError(f"unknown model {args.model!r}; {registry.root} has {registry.model_names()}")
        ref = registry.get(args.model, args.version) if args.version else registry.current(args.model)
    except (UsageError, RegistryError) as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    providers = resolve_providers(settings.providers)
    try:
        args.executor = choose_executor(args, ref)
        # Checksum and smoke check before any work. Thread workers share this session; worker processes load their own.
        model = load_model(ref, providers, session_threads(args, settings) if args.executor == "thread" else 1)
    except (RegistryError, ModelLoadError) as exc:
        print(f"error: {exc}", file=err)
        return EXIT_FAILED
    if args.batch_size is None:
        pre = model.preprocessor
        args.batch_size = settings.image_batch_size if isinstance(pre, ImagePreprocessor) else settings.text_batch_size if isinstance(pre, TextPreprocessor) else settings.tabular_batch_size
    try:
        job = build_job(args, model, settings)
    except (UsageError, BatchInputError) as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    work = WorkDir(job.output)
    try:
        state = open_state(job, work, args.restart)
    except UsageError as exc:
        work.release()
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    if isinstance(job.source, ImageFolder) and job.source.skipped:
        shown = ", ".join(job.source.skipped[:3]) + (", ..." if len(job.source.skipped) > 3 else "")
        print(f"note: skipping {len(job.source.skipped):,} non-image file(s), without an image suffix: {shown}", file=err)
    if state.position:
        print(f"resuming {job.output}: {state.position:,} of {job.total:,} {job.unit}s already done", file=err)

    started = time.monotonic()
    start_position = state.position
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)} if threading.current_thread() is threading.main_thread() else {}
    try:
        if not state.complete:
            run(args, job, work, state, settings, providers, err)
        finish(job, work, state)
    except (Interrupted, KeyboardInterrupt):
        print(f"\ninterrupted: {state.position:,} of {job.total:,} {job.unit}s committed; run the same command again to resume", file=err)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a worker died, the disk filled up, ...: what is committed stays
        print(f"error: {type(exc).__name__}: {exc}\n{state.position:,} of {job.total:,} {job.unit}s committed; run the same command again to resume", file=err)
        return EXIT_FAILED
    finally:
        work.release()
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    elapsed = time.monotonic() - started
    rate = (state.position - start_position) / elapsed if elapsed > 0 else math.inf
    print(
        f"{model.name} v{model.version}: {state.scored:,} of {job.total:,} {job.unit}s scored, {state.failed:,} failed"
        f"{f' (see {job.errors})' if state.failed else ''}; wrote {job.output} in {elapsed:.1f} s ({rate:,.0f} {job.unit}s/s)",
        file=err,
    )
    return EXIT_ROWS_FAILED if state.failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

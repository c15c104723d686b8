"""Running a batch job: validate and predict in a pool of workers, commit in chunks, show progress.

Work flows reader -> pool of workers (validate + predict a batch) -> writer. The
reader and the writer stay in this process; the workers are threads or processes
(see choose_executor). Validation and prediction are the task's and the runtime's,
exactly as the HTTP service runs them, so a row's answer here is the answer the API
gives for it, and a row the API would refuse is refused here with the same reason.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
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

from service.batch.formats import Unreadable, assemble, write_part
from service.batch.job import Item, Job, Key
from service.batch.state import State, WorkDir
from service.core.config import Settings, available_cpus
from service.core.errors import InputError
from service.core.registry import ModelVersion
from service.core.runtime import LoadedModel, load_model
from service.core.tasks import Task

IN_FLIGHT_PER_WORKER = 2  # batches queued per worker: enough to keep it busy, few enough to keep memory flat
PROGRESS_EVERY_S = 10.0  # a progress line this often when stderr is not a terminal
PARENT_POLL_S = 1.0  # how often a worker process checks that the job still runs

Outcome = dict[str, Any] | str  # an answer, or why the input was not scored


# ---------------------------------------------------------------- validation and prediction (runs in the workers)


@dataclass
class Scorer:
    """Validate raw inputs as the HTTP API does, then predict the valid ones in one call."""

    model: LoadedModel
    settings: Settings
    folder: Path | None = None  # folder inputs are paths relative to it

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
            problem = self.model.task.check_answer(answer)  # NaN or infinity: listed as failed, never written into JSON
            outcomes[i] = f"the model's answer is {problem}: {answer}" if problem else answer
        return outcomes

    def validate(self, value: Any) -> Any:
        if isinstance(value, Unreadable):
            raise InputError(value.reason)
        if self.folder is not None:
            value = self.folder / value
        try:
            return self.model.task.validate(value, self.model.assets, self.settings)
        except InputError as exc:
            raise InputError(f"{self.model.task.item_noun}: {exc}") from None


_worker_scorer: Scorer | None = None


def _start_worker(ref: ModelVersion, providers: list[str], threads: int, settings: Settings, folder: Path | None, parent: int) -> None:
    """Process-pool initializer: load the model in this process; leave Ctrl-C to the parent."""
    global _worker_scorer
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    _worker_scorer = Scorer(load_model(ref, providers, threads, int8=settings.int8, int8_bounds=settings.int8_bounds()), settings, folder)


def _exit_with_parent(parent: int) -> None:
    """A job killed with SIGKILL cannot stop its pool; its workers notice and leave."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def _score_in_worker(values: list[Any]) -> list[Outcome]:
    assert _worker_scorer is not None
    return _worker_scorer.score(values)


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
            self.bar = tqdm(
                total=self.total, initial=self.done, unit=self.unit, desc=self.label, file=stream, dynamic_ncols=True, smoothing=0.1
            )
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
        print(
            f"{self.label}: {self.done:,}/{self.total:,} {self.unit}s ({share:.1f}%), {rate:,.0f} {self.unit}s/s, {self.failed:,} failed, ETA {eta}",
            file=self.stream,
            flush=True,
        )

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
    """onnxruntime threads per session: MODELSERVE_INTRA_OP_THREADS, else the CPUs (cgroup quota respected) shared among the workers."""
    return settings.intra_op_threads or max(1, available_cpus() // args.workers)


def choose_executor(args: argparse.Namespace, task: Task) -> str:
    """--executor auto: processes when the task's preprocessing holds the GIL (text), threads otherwise.

    Measured on 2 cores (benchmarks/results/batch.md): text preprocessing (tokenising,
    TF-IDF) is pure Python, so two threads score no faster than one while two
    processes score 1.5-1.7x faster on 30,000+ rows. Pillow's decoding and onnxruntime
    release the GIL, so for images threads keep up with processes at half the memory
    and without the processes' start-up; feature rows are too cheap to care.
    """
    if args.executor != "auto":
        return str(args.executor)
    return "process" if task.gil_bound and args.workers > 1 else "thread"


def make_pool(
    args: argparse.Namespace, job: Job, settings: Settings, providers: list[str]
) -> tuple[Executor, Callable[[list[Any]], list[Outcome]]]:
    """Threads sharing the job's session, or processes with a session each."""
    if args.executor == "thread":
        scorer = Scorer(job.model, settings, job.folder)
        return ThreadPoolExecutor(args.workers, thread_name_prefix="score"), scorer.score
    threads = session_threads(args, settings)
    pool = ProcessPoolExecutor(
        args.workers,
        mp_context=multiprocessing.get_context("spawn"),  # never fork a process that runs onnxruntime threads
        initializer=_start_worker,
        initargs=(job.model.version_ref, providers, threads, settings, job.folder, os.getpid()),
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
    """Assemble the committed parts into the errors file (only when an input failed) and OUTPUT, then drop the work folder."""
    state.complete = True
    work.save(state)
    errors = [p for p in map(work.errors_part, range(state.parts)) if p.exists()]
    if errors:
        failed = assemble(errors, job.errors_schema, job.errors_format, job.errors)
    else:  # no errors file: an empty one said nothing, and one left from an earlier run of this job would be wrong
        failed = 0
        job.errors.unlink(missing_ok=True)
    scored = assemble([work.part(i) for i in range(state.parts)], job.schema, job.output_format, job.output)
    if (scored, failed) != (state.scored, state.failed):
        raise RuntimeError(f"assembled {scored} rows and {failed} errors, the state says {state.scored} and {state.failed}")
    work.remove()

"""Offline batch scoring with the serving runtime, no HTTP: `python -m service.batch MODEL INPUT -o OUTPUT`.

Why it reuses the service's pieces instead of its own: the version is resolved like
the service does (CURRENT, or an explicit one), loaded by `runtime.load_model`
(checksum, smoke check), every item is validated by the model's task with the same
`MODELSERVE_*` limits, and predicted by `LoadedModel.predict`; so a row's answer
here is the answer the HTTP API gives for it.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from service.batch.formats import OUTPUT_FORMATS, FileFolder
from service.batch.job import Job, build_job
from service.batch.run import choose_executor, finish, run, session_threads
from service.batch.state import State, WorkDir, open_state
from service.core.config import Settings, available_cpus
from service.core.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_ROWS_FAILED, Interrupted, ModelServeError, UsageError
from service.core.registry import Registry
from service.core.runtime import LoadedModel, load_model, max_batch_size
from service.core.sessions import resolve_providers
from service.core.tasks.batch_inputs import batch_input
from service.core.tasks.kinds import KINDS, task_for

DEFAULT_CHUNK_SIZE = 1024  # inputs per committed part: what a crash can cost, and the cost of one commit

EPILOG = """\
output:
  One row per scored input: its key (`row`, the 0-based row number, or `path`, the
  file's path relative to INPUT), the prediction fields of the HTTP API, `model` and
  `version`, and with --keep-columns the input's columns as input_<name>. Inputs that
  cannot be scored go to the errors file with their key and the reason, and the job
  goes on; by default the errors file is beside OUTPUT: scores.csv -> scores.errors.csv,
  scores.jsonl or scores.parquet -> scores.errors.jsonl.

settings:
  The service's MODELSERVE_* variables apply here too: MODEL_ROOT, PROVIDERS,
  INTRA_OP_THREADS, MAX_BATCH_SIZE and the input limits MAX_TEXT_CHARS, MAX_IMAGE_BYTES,
  MAX_IMAGE_PIXELS.

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


def models_help() -> str:
    """What a model of each kind reads, from its task's batch input."""
    lines = ["inputs, by the model's kind (GET /models and `python -m training list` name each model's):"]
    for kind in KINDS:
        task = task_for({"preprocessing": {"kind": kind}, "labels": [], "outputs": []})
        lines.append(f"  {kind} ({task.name})")
        lines += [f"      {line}" for line in batch_input(task).help.splitlines()]
    return "\n".join(lines) + "\n\n"


def positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m service.batch",
        description="Score a file or folder offline with a registry model, exactly as the HTTP service would answer.",
        epilog=models_help() + EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="the registry's name of the model (any model with a version; see `python -m training list`)")
    parser.add_argument("input", help="CSV/JSONL/Parquet file (text and tabular models) or folder of files (image models)")
    parser.add_argument("-o", "--output", required=True, help="result file; .csv, .jsonl or .parquet (or --format)")
    parser.add_argument("--version", type=positive, help="model version (default: the registry's CURRENT, as served)")
    parser.add_argument(
        "--errors", help="file for inputs that could not be scored, .csv/.jsonl/.parquet (default: beside OUTPUT, see below)"
    )
    parser.add_argument("--format", choices=OUTPUT_FORMATS, help="output format when OUTPUT's suffix does not say")
    parser.add_argument("--input-format", choices=OUTPUT_FORMATS, help="input format when INPUT's suffix does not say")
    parser.add_argument("--text-column", help="column holding the text (text models)")
    parser.add_argument("--keep-columns", action="store_true", help="copy the input's columns into the output as input_<name>")
    parser.add_argument("--batch-size", type=positive, help="inputs per onnxruntime call (default: the service's batch size for the model)")
    parser.add_argument(
        "--chunk-size",
        type=positive,
        default=DEFAULT_CHUNK_SIZE,
        help=f"inputs per committed part; a crash loses at most this much work (default {DEFAULT_CHUNK_SIZE})",
    )
    parser.add_argument(
        "--workers", type=positive, default=available_cpus(), help="parallel workers (default: one per CPU this process may use)"
    )
    parser.add_argument(
        "--executor", choices=("auto", "thread", "process"), default="auto",
        help="workers are threads sharing one session, or processes with one each; auto (default): processes for text models, threads for the others",
    )  # fmt: skip
    parser.add_argument("--model-root", type=Path, help="registry root (default: MODELSERVE_MODEL_ROOT, else models)")
    parser.add_argument(
        "--restart", "--overwrite", dest="restart", action="store_true", help="discard saved progress and replace an existing OUTPUT"
    )
    parser.add_argument(
        "--engine", choices=("local", "spark"), default="local",
        help="local (default): this machine, resumable; spark: Apache Spark (pip install -e '.[spark]', Java 17+), OUTPUT is a dataset folder",
    )  # fmt: skip
    spark = parser.add_argument_group("spark engine (--engine spark; --workers, --executor and --chunk-size do not apply)")
    spark.add_argument("--master", help="Spark master: local[2], yarn, spark://host:7077, ... (default: spark-submit's, else local[*])")
    spark.add_argument(
        "--conf", action="append", default=[], metavar="KEY=VALUE", help="a Spark setting, as spark-submit's --conf; repeatable"
    )
    spark.add_argument(
        "--partitions",
        type=positive,
        help="tasks to spread the inputs over (default: the input's split, or 4 per core when that is fewer than 2 per core)",
    )
    spark.add_argument(
        "--executor-model-root",
        help="the registry root as executors see it (a shared mount, e.g. /dbfs/models); default: ship the version's files with the job",
    )  # fmt: skip
    return parser.parse_args(argv)


def _interrupt(signum: int, frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted, so that what is committed stays committed."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def load(args: argparse.Namespace, settings: Settings) -> tuple[LoadedModel, list[str]]:
    """The version to score with (CURRENT, or --version), loaded and smoke-checked before any work."""
    registry = Registry(args.model_root or settings.model_root)
    if args.model not in registry.model_names():
        raise UsageError(f"no model {args.model!r} in {registry.root}; it has {registry.model_names()}")
    ref = registry.get(args.model, args.version) if args.version else registry.current(args.model)
    task = task_for(ref.verify())
    providers = resolve_providers(settings.providers)
    args.executor = choose_executor(args, task)
    # Thread workers share this session; worker processes load their own.
    model = load_model(
        ref,
        providers,
        session_threads(args, settings) if args.executor == "thread" else 1,
        int8=settings.int8,
        int8_bounds=settings.int8_bounds(),
    )
    if args.batch_size is None:
        args.batch_size = max_batch_size(settings, args.model, task, providers)
    return model, providers


def _announce(job: Job, state: State, err: TextIO) -> None:
    if isinstance(job.source, FileFolder) and job.source.skipped:
        shown = ", ".join(job.source.skipped[:3]) + (", ..." if len(job.source.skipped) > 3 else "")
        print(f"note: skipping {len(job.source.skipped):,} file(s) without an input suffix: {shown}", file=err)
    if state.position:
        print(f"resuming {job.output}: {state.position:,} of {job.total:,} {job.unit}s already done", file=err)


def score(args: argparse.Namespace, job: Job, work: WorkDir, state: State, settings: Settings, providers: list[str], err: TextIO) -> int:
    """Run (or resume) the job to the end and print its summary; return the exit status."""
    started, start_position = time.monotonic(), state.position
    try:
        with _stop_on_signals():
            if not state.complete:
                run(args, job, work, state, settings, providers, err)
            finish(job, work, state)
    except (Interrupted, KeyboardInterrupt):
        print(f"\ninterrupted: {state.position:,} of {job.total:,} {job.unit}s committed; run the same command again to resume", file=err)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a worker died, the disk filled up, ...: what is committed stays
        print(
            f"error: {type(exc).__name__}: {exc}\n{state.position:,} of {job.total:,} {job.unit}s committed; run the same command again to resume",
            file=err,
        )
        return EXIT_FAILED
    elapsed = time.monotonic() - started
    rate = (state.position - start_position) / elapsed if elapsed > 0 else math.inf
    model = job.model
    print(
        f"{model.name} v{model.version} ({model.model_file.path.name}): {state.scored:,} of {job.total:,} {job.unit}s scored, {state.failed:,} failed"
        f"{f' (see {job.errors})' if state.failed else ''}; wrote {job.output} in {elapsed:.1f} s ({rate:,.0f} {job.unit}s/s)",
        file=err,
    )
    if model.model_file.cpu:  # a version with an INT8 variant: which file ran here, and why
        print(f"model file: {model.model_file.summary()}", file=err)
    return EXIT_ROWS_FAILED if state.failed else EXIT_OK


def main(argv: Sequence[str] | None = None, stream: TextIO | None = None) -> int:
    args = parse_args(argv)
    err = stream or sys.stderr
    if args.engine == "spark":
        from service.batch.spark import run_spark  # pyspark only when asked for

        return run_spark(args, err)
    work: WorkDir | None = None
    try:
        settings = Settings.from_env()
        model, providers = load(args, settings)
        job = build_job(args, model, settings)
        work = WorkDir(job.output)
        state = open_state(job.output, job.fingerprint, work, args.restart)
        _announce(job, state, err)
        return score(args, job, work, state, settings, providers, err)
    except ModelServeError as exc:
        print(f"error: {exc}", file=err)
        return exc.exit_code
    finally:
        if work is not None:
            work.release()

"""Batch scoring on Apache Spark, for inputs that outgrow one machine.

    python -m service.batch MODEL INPUT -o OUTPUT --engine spark [--master local[2]]
    spark-submit service/batch/spark.py MODEL INPUT -o OUTPUT

Why this shape: the driver resolves and verifies the version exactly as the
single-machine scorer does (registry, `load_model`), ships the version folder with the
job (`SparkContext.addFile`) or names a shared copy, and hands a small picklable plan to
`spark_worker.score_batches`, which Spark runs with `mapInArrow` in its Python workers;
each worker loads the version once (checksummed there) and reuses it for every batch.
Rows Spark cannot number or parse, and rows the task refuses, come back as rows with a
reason, never dropped: the result is cached, counted (rows in = scored + errors, or the
job fails), then written as two datasets through Spark's commit protocol. Scoring
finishes before anything is written, so a failed job leaves no output behind.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import hashlib
import io
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, TextIO
from urllib.parse import unquote, urlsplit

import pyarrow as pa
from pyspark import AccumulatorParam, SparkConf, StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import from_arrow_schema

import service
from service.batch.formats import KEPT_PREFIX, Unreadable, jsonl_row, output_format, table_format
from service.batch.job import answer_fields
from service.batch.spark_worker import CONTENT, CORRUPT_RECORD, EXECUTOR_ERROR, LINE, REASON, WorkerPlan, score_batches
from service.core.config import Settings
from service.core.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_ROWS_FAILED, ModelServeError, UsageError
from service.core.registry import Registry
from service.core.runtime import LoadedModel, load_model
from service.core.tasks.batch_inputs import FOLDER, batch_input

# pyspark 4.3 warns about pandas 3 when a session starts and on mapInArrow; this engine hands workers Arrow batches, never pandas.
warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")

PROGRESS_EVERY_S = 10.0  # one console line this often while Spark works
TASKS_PER_CORE = 4  # an input read as fewer than 2 partitions per core is spread over this many tasks per core
ARROW_RECORDS_TABLE = 10_000  # rows per Arrow batch handed to a worker (Spark's default)
ARROW_BATCHES_IMAGE = 4  # image inputs: Arrow batches of this many onnxruntime batches, so a batch holds tens of files, not 10,000
CODE_PACKAGES = ("service/__init__.py", "service/core", "service/batch")  # what executors import (not service/http: no BentoML there)
# A session this job starts: our progress line instead of Spark's console bar (which is for terminals), and Spark's own
# log at WARN from the start (its INFO start-up lines bury the progress); --conf overrides either.
OWN_SESSION_DEFAULTS = {"spark.ui.showConsoleProgress": "false", "spark.log.level": "WARN"}
BLANK_LINE = r"(?U)\S"  # JSONL lines with something other than whitespace are rows, as in the single-machine reader


# ---------------------------------------------------------------- command line and destinations


@dataclass(frozen=True)
class Destinations:
    output: str
    output_format: str
    errors: str
    errors_format: str


def destinations(args: argparse.Namespace) -> Destinations:
    """OUTPUT and the errors dataset beside it (scores.parquet -> scores.errors.parquet), as URIs or paths; never the same."""
    output = args.output.rstrip("/")
    fmt = output_format(PurePosixPath(output), args.format)  # type: ignore[arg-type]
    if args.errors:
        errors = args.errors.rstrip("/")
    else:
        suffix = PurePosixPath(output).suffix
        errors = f"{output.removesuffix(suffix)}.errors{suffix}" if suffix else f"{output}.errors"
    if errors == output:
        raise UsageError("--errors must differ from OUTPUT")
    return Destinations(output, fmt, errors, output_format(PurePosixPath(errors), fmt if not args.errors else None))  # type: ignore[arg-type]


# ---------------------------------------------------------------- session, files, progress


def start_session(args: argparse.Namespace) -> tuple[SparkSession, bool]:
    """The active session (spark-submit, a notebook, a test), or a new one; True when this job owns it and stops it."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active, False
    under_submit = "PYSPARK_GATEWAY_PORT" in os.environ
    if not under_submit and (args.master or "local").startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # local workers run this interpreter, not whatever `python3` is
    builder = SparkSession.builder.appName(f"modelserve batch {args.model}")
    if args.master:
        builder = builder.master(args.master)
    given = SparkConf()  # what spark-submit (--conf, spark-defaults.conf) already says wins over our defaults
    settings = {key: value for key, value in OWN_SESSION_DEFAULTS.items() if not given.contains(key)}
    for setting in args.conf:
        key, sep, value = setting.partition("=")
        if not sep:
            raise UsageError(f"--conf {setting!r}: expected KEY=VALUE")
        settings[key] = value
    for key, value in settings.items():
        builder = builder.config(key, value)
    return builder.getOrCreate(), True


class HadoopFS:
    """Paths as Spark sees them (local, hdfs://, s3a://, abfss://), through the JVM's Hadoop FileSystem."""

    def __init__(self, spark: SparkSession) -> None:
        self.jvm = spark.sparkContext._jvm
        self.conf = spark.sparkContext._jsc.hadoopConfiguration()

    def _resolve(self, path: str) -> tuple[Any, Any]:
        jpath = self.jvm.org.apache.hadoop.fs.Path(path)
        return jpath.getFileSystem(self.conf), jpath

    def exists(self, path: str) -> bool:
        fs, jpath = self._resolve(path)
        return bool(fs.exists(jpath))

    def is_dir(self, path: str) -> bool:
        fs, jpath = self._resolve(path)
        return bool(fs.exists(jpath) and fs.getFileStatus(jpath).isDirectory())

    def qualify(self, path: str) -> str:
        fs, jpath = self._resolve(path)
        return str(fs.makeQualified(jpath).toString())

    def delete(self, path: str) -> None:
        fs, jpath = self._resolve(path)
        fs.delete(jpath, True)


_shipped: dict[str, set[str]] = {}  # names added to each SparkContext (by application id): Spark refuses a name twice
_staging: list[Path] = []  # what addFile serves lives until this process exits: executors that join later fetch it then


def ship(spark: SparkSession, name: str, make: Callable[[Path], None], python: bool = False) -> None:
    """Add a file or folder to the job once per SparkContext, under a content-addressed `name`."""
    sc = spark.sparkContext
    added = _shipped.setdefault(sc.applicationId, set())
    if name in added:
        return
    if not _staging:
        _staging.append(Path(tempfile.mkdtemp(prefix="modelserve-spark-")))
        atexit.register(shutil.rmtree, _staging[0], True)
    target = _staging[0] / name
    if not target.exists():
        make(target)
    if python:
        sc.addPyFile(str(target))
    else:
        sc.addFile(str(target), recursive=target.is_dir())
    added.add(name)


def ship_code(spark: SparkSession) -> None:
    """Send this driver's service.core and service.batch to the executors, so they run the code the driver planned with."""
    root = Path(service.__file__).resolve().parent.parent
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name in CODE_PACKAGES:
            for file in [root / name] if name.endswith(".py") else sorted((root / name).rglob("*.py")):
                bundle.writestr(zipfile.ZipInfo(file.relative_to(root).as_posix()), file.read_bytes())  # no timestamps: same code, same zip
    data = buffer.getvalue()
    ship(spark, f"modelserve-code-{hashlib.sha256(data).hexdigest()[:12]}.zip", lambda path: path.write_bytes(data), python=True)


def ship_version(spark: SparkSession, model: LoadedModel) -> str:
    """The version's files with the job, under a name of their own (SparkFiles keys by last path component: a version folder is "1")."""
    name = f"modelserve-{model.name}-v{model.version}-{model.metadata['sha256'][:12]}"

    def copy(target: Path) -> None:
        target.mkdir()
        for file in model.version_ref.path.iterdir():
            if file.is_file() and file.suffix != ".png":  # the version's plots are not needed to score
                shutil.copyfile(file, target / file.name)

    ship(spark, name, copy)
    return name


class Progress(threading.Thread):
    """One console line every PROGRESS_EVERY_S seconds from Spark's status tracker (the UI shows the same jobs, described)."""

    def __init__(self, spark: SparkSession, label: str, stream: TextIO) -> None:
        super().__init__(name="spark-progress", daemon=True)
        self.sc = spark.sparkContext
        self.label = label
        self.stream = stream
        self.phase = "starting"
        self.counter: Any = None
        self.started = time.monotonic()
        self.stopped = threading.Event()

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.sc.setJobDescription(f"modelserve {self.label}: {phase}")

    def run(self) -> None:
        while not self.stopped.wait(PROGRESS_EVERY_S):
            self.line()

    def line(self) -> None:
        tracker = self.sc.statusTracker()
        stages = [s for s in map(tracker.getStageInfo, tracker.getActiveStageIds()) if s is not None]
        tasks = ", ".join(f"stage {s.stageId}: {s.numCompletedTasks}/{s.numTasks} tasks done, {s.numActiveTasks} running" for s in stages)
        done = f"; {self.counter.value:,} inputs scored in finished tasks" if self.counter is not None else ""
        elapsed = time.monotonic() - self.started
        print(f"{self.label}: {self.phase}, {elapsed:.0f} s: {tasks or 'no stage running'}{done}", file=self.stream, flush=True)

    def stop(self) -> None:
        self.stopped.set()


def col(name: str) -> Column:
    """A column by its exact name: a CSV header may hold dots or spaces."""
    return F.col("`" + name.replace("`", "``") + "`")


# ---------------------------------------------------------------- inputs


@dataclass
class Prepared:
    """The inputs as one DataFrame row each (keys, what the worker reads, kept columns), and what the driver knows of them."""

    frame: DataFrame
    plan: WorkerPlan
    total: int  # inputs, counted from the input itself before scoring
    partitions: int  # as Spark splits the input
    unit: str
    notes: list[str]


def driver_model(args: argparse.Namespace, settings: Settings) -> LoadedModel:
    """The version to score with (CURRENT, or --version), verified and smoke-checked here before any executor starts."""
    registry = Registry(args.model_root or settings.model_root)
    if args.model not in registry.model_names():
        raise UsageError(f"no model {args.model!r} in {registry.root}; it has {registry.model_names()}")
    ref = registry.get(args.model, args.version) if args.version else registry.current(args.model)
    return load_model(
        ref, ["CPUExecutionProvider"], 1, int8=settings.int8, int8_bounds=settings.int8_bounds()
    )  # checked here; read for its answer fields


def suffix_glob(suffixes: Sequence[str]) -> str:
    """A Hadoop glob for file names ending in any of `suffixes`, in any case: *.{[jJ][pP][gG],...}."""
    cased = ["".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in s.lstrip(".")) for s in suffixes]
    return "*.{" + ",".join(cased) + "}"


def suffix_match(suffixes: Sequence[str]) -> Column:
    """The same rule as a column expression over a full path (for counting the files the glob leaves out)."""
    return F.lower(F.col("path")).rlike(r"\.(" + "|".join(s.lstrip(".").lower() for s in suffixes) + ")$")


def hadoop_path(uri: str) -> str:
    """A file index URI (file:///a/x%20y.jpg) as binaryFile's `path` column writes it (Hadoop's Path.toString: file:/a/x y.jpg)."""
    parts = urlsplit(uri)
    return f"{parts.scheme}:{'//' + parts.netloc if parts.netloc else ''}{unquote(parts.path)}"


def unscanned_files(images: DataFrame, listed: int) -> list[str]:
    """Files the index lists that the scan yields no row for: Spark makes no split for a zero-byte file.

    Only when the counts differ are the names compared (that crosses py4j once per file).
    """
    if images.select("path").count() == listed:
        return []
    seen = {row.path for row in images.select("path").collect()}
    return sorted({hadoop_path(str(uri)) for uri in images._jdf.inputFiles()} - seen)


def prepare_folder(spark: SparkSession, fs: HadoopFS, args: argparse.Namespace, model: LoadedModel, base: WorkerPlan) -> Prepared:
    """Image files under a folder tree through binaryFile; keys are paths relative to the folder, as in the single-machine scorer.

    Spark's file sources make no split for a zero-byte file, so binaryFile yields no row
    for it; the file index does list it. Such files join the inputs with their (empty)
    content, and the task refuses them ("is empty") as it does on one machine.
    """
    suffixes = batch_input(model.task).file_suffixes
    if not fs.is_dir(args.input):
        raise UsageError(f"{args.input}: no such folder (this model reads a folder tree of {', '.join(suffixes)} files)")
    root = fs.qualify(args.input)
    images = spark.read.format("binaryFile").options(recursiveFileLookup="true", pathGlobFilter=suffix_glob(suffixes)).load(root)
    everything = spark.read.format("binaryFile").options(recursiveFileLookup="true").load(root)
    total = len(images._jdf.inputFiles())  # the file index's count (a Java array's length: one py4j call)
    skipped = len(everything._jdf.inputFiles()) - total
    notes = []
    if skipped:
        others = everything.select("path").filter(~suffix_match(suffixes)).orderBy("path").limit(3)
        shown = [r.path[len(root) + 1 :] for r in others.collect()]
        notes.append(f"note: skipping {skipped:,} file(s) without an input suffix: {', '.join(shown)}{', ...' if skipped > 3 else ''}")
    frame = images.select("path", CONTENT)
    empty = unscanned_files(images, total)
    if empty:
        frame = frame.unionByName(spark.createDataFrame([(path, b"") for path in empty], f"path string, {CONTENT} binary"))
    frame = frame.select(F.col("path").substr(len(root) + 2, 1 << 30).alias("path"), CONTENT)
    plan = replace(base, source="folder", keys=("path",))
    return Prepared(frame, plan, total, images.rdd.getNumPartitions(), model.task.item_noun, notes)


def read_table(spark: SparkSession, path: str, fmt: str) -> tuple[DataFrame, list[str]]:
    """The table's rows with `_file` and each input column as input_<name>, and the input's column names.

    input_<name>: the frame's own columns (keys, `_file`, ...) cannot clash with the
    input's, and kept columns are already named as the output has them. JSONL lines
    stay text (the worker parses them as the single-machine reader does, so a number
    where a text should be is refused, not turned into "42"); its columns are the
    first object's keys.
    """
    file = F.col("_metadata.file_path").alias("_file")
    if fmt == "csv":
        # multiLine: a quoted field may hold line breaks (Python's csv writes them so); escape: quotes are doubled, not backslashed.
        options = {"header": "true", "multiLine": "true", "escape": '"', "mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT_RECORD}
        header = spark.read.options(**options).csv(path).columns
        schema = T.StructType([T.StructField(c, T.StringType()) for c in header] + [T.StructField(CORRUPT_RECORD, T.StringType())])
        raw = spark.read.options(**options).schema(schema).csv(path)
        # An empty field is "" to the single-machine reader (CSV has no null); Spark reads it as null.
        return raw.select(*[F.coalesce(col(c), F.lit("")).alias(KEPT_PREFIX + c) for c in header], CORRUPT_RECORD, file), header
    if fmt == "jsonl":
        lines = spark.read.text(path).filter(F.col(LINE).rlike(BLANK_LINE)).select(LINE, file)
        for first in lines.take(100):
            row = jsonl_row(first[LINE].lstrip("\ufeff"))
            if not isinstance(row, Unreadable):
                return lines, [str(k) for k in row]
        raise UsageError(f"{path}: no JSON object in its first lines")
    raw = spark.read.parquet(path)
    return raw.select(*[col(c).alias(KEPT_PREFIX + c) for c in raw.columns], file), list(raw.columns)


def number_rows(spark: SparkSession, frame: DataFrame) -> tuple[DataFrame, int, int, int]:
    """Add `row`, the 0-based row number within its file, as the single-machine scorer numbers a file's rows.

    One counting job: rows per (partition, file) and the first monotonically_increasing_id
    in each; a partition reads a contiguous run of a file, and partitions are in file
    order, so a row's number is its id minus its group's first id plus the rows of
    the same file in earlier partitions. Return (frame, rows, files, partitions).
    """
    marked = frame.select("*", F.spark_partition_id().alias("_pid"), F.monotonically_increasing_id().alias("_mid"))
    groups = marked.groupBy("_pid", "_file").agg(F.count(F.lit(1)).alias("n"), F.min("_mid").alias("first")).collect()
    before: dict[str, int] = {}
    bases = []
    for group in sorted(groups, key=lambda g: g["first"]):
        bases.append((group["_pid"], group["_file"], before.get(group["_file"], 0) - group["first"]))
        before[group["_file"]] = before.get(group["_file"], 0) + group["n"]
    offsets = spark.createDataFrame(bases, "_pid int, _file string, _base long")
    numbered = marked.join(F.broadcast(offsets), ["_pid", "_file"]).withColumn("row", F.col("_mid") + F.col("_base"))
    partitions = 1 + max((g["_pid"] for g in groups), default=0)
    return numbered, sum(before.values()), len(before), partitions


def prepare_table(spark: SparkSession, args: argparse.Namespace, model: LoadedModel, base: WorkerPlan) -> Prepared:
    """Rows of CSV, JSONL or Parquet files (one file, a folder of them or a glob), numbered; the task picks its columns."""
    fmt = table_format(PurePosixPath(args.input), args.input_format)  # type: ignore[arg-type]
    frame, columns = read_table(spark, args.input, fmt)
    wanted = tuple(batch_input(model.task).columns(columns, model.assets, args.text_column))
    numbered, total, files, partitions = number_rows(spark, frame)
    keys = ("file", "row") if files > 1 else ("row",)
    kept = tuple(columns) if args.keep_columns else ()
    if fmt == "jsonl":
        reads, changes = [LINE], {"jsonl_columns": kept}
    elif fmt == "csv":
        reads, changes = [KEPT_PREFIX + c for c in columns] + [CORRUPT_RECORD], {"header": tuple(columns), "kept": kept}
    else:
        reads, changes = [KEPT_PREFIX + c for c in dict.fromkeys([*wanted, *kept])], {"kept": kept}
    frame = numbered.withColumnRenamed("_file", "file").select(*keys, *[col(c) for c in reads])
    plan = replace(base, source=fmt, columns=wanted, keys=keys, **changes)
    return Prepared(frame, plan, total, partitions, "row", [])


def spread(frame: DataFrame, partitions: int, requested: int | None, cores: int) -> DataFrame:
    """Enough tasks to keep every core busy (a single CSV file, or a one-row-group Parquet, is one partition)."""
    target = requested or (TASKS_PER_CORE * cores if partitions < 2 * cores else partitions)
    return frame.repartition(target) if target != partitions else frame


# ---------------------------------------------------------------- scoring and writing


def output_struct(frame: DataFrame, plan: WorkerPlan) -> T.StructType:
    """The Spark schema of what score_batches yields, field for field: keys, answers, kept columns, reason."""
    by_name = {f.name: f for f in frame.schema.fields}
    fields = [by_name[k] for k in plan.keys]
    fields += from_arrow_schema(plan.answers).fields
    fields += [by_name[KEPT_PREFIX + c] for c in plan.kept]
    fields += [T.StructField(KEPT_PREFIX + c, T.StringType()) for c in plan.jsonl_columns]
    return T.StructType([*fields, T.StructField(REASON, T.StringType())])


def flatten(frame: DataFrame) -> DataFrame:
    """CSV has no nested fields: probabilities.cats, ..., as the single-machine scorer writes them."""
    columns: list[Column] = []
    for field in frame.schema.fields:
        if isinstance(field.dataType, T.StructType):
            columns += [col(field.name).getField(sub.name).alias(f"{field.name}.{sub.name}") for sub in field.dataType.fields]
        else:
            columns.append(col(field.name))
    return frame.select(*columns)


def write(frame: DataFrame, path: str, fmt: str, overwrite: bool) -> None:
    """One dataset through Spark's commit protocol: its files appear (with _SUCCESS) only when every task's are committed."""
    if fmt == "csv":
        frame = flatten(frame)
    writer = frame.write.mode("overwrite" if overwrite else "errorifexists")
    if fmt == "csv":
        writer.options(header="true", escape='"').csv(path)  # quotes doubled, as RFC 4180 and Python's csv write them
    elif fmt == "jsonl":
        writer.option("ignoreNullFields", "false").json(path)
    else:
        writer.parquet(path)


def failure(exc: BaseException) -> str:
    """One line out of Spark's wrapped exception: the executor's own message (checksum mismatch, ...), else the Python
    traceback's last line, else the exception's first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if EXECUTOR_ERROR in line:
            return line[line.index(EXECUTOR_ERROR) + len(EXECUTOR_ERROR) :]
    if any(line.startswith("Traceback (most recent call last)") for line in lines):
        return lines[-1]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


@dataclass
class Counts:
    total: int
    scored: int
    failed: int
    files: dict[str, int] = dataclasses.field(default_factory=dict)  # "host: the file its executor ran, and why" -> tasks


class TaskCounts(AccumulatorParam):
    """A Spark accumulator of counts by key: what each executor ran, summed over tasks."""

    def zero(self, value: dict[str, int]) -> dict[str, int]:
        return {}

    def addInPlace(self, first: dict[str, int], second: dict[str, int]) -> dict[str, int]:
        for key, count in second.items():
            first[key] = first.get(key, 0) + count
        return first


def score_and_write(spark: SparkSession, prepared: Prepared, dest: Destinations, overwrite: bool, progress: Progress) -> Counts:
    """Score everything into Spark's cache and count it; only then write OUTPUT and the errors dataset."""
    plan = prepared.plan
    counter = spark.sparkContext.accumulator(0)
    progress.counter = counter
    files = spark.sparkContext.accumulator({}, TaskCounts())
    results = prepared.frame.mapInArrow(partial(score_batches, plan, counter, files), output_struct(prepared.frame, plan))
    results = results.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        progress.set_phase("scoring")
        counts = {row["ok"]: row["count"] for row in results.groupBy(F.col(REASON).isNull().alias("ok")).count().collect()}
        scored, failed = counts.get(True, 0), counts.get(False, 0)
        if scored + failed != prepared.total:
            raise RuntimeError(f"{prepared.total:,} inputs in, but {scored:,} scored + {failed:,} refused came out")
        progress.set_phase("writing")
        written: list[str] = []
        try:
            for path, fmt, rows in (
                (dest.errors, dest.errors_format, results.filter(F.col(REASON).isNotNull()).select(*plan.keys, REASON)),
                (dest.output, dest.output_format, results.filter(F.col(REASON).isNull()).drop(REASON)),
            ):
                written.append(path)
                write(rows, path, fmt, overwrite)
        except BaseException:
            for path in written:  # the errors dataset without its OUTPUT is no result: take it back
                HadoopFS(spark).delete(path)
            raise
    finally:
        results.unpersist()
    return Counts(prepared.total, scored, failed, dict(files.value))


# ---------------------------------------------------------------- the job


def base_plan(spark: SparkSession, args: argparse.Namespace, model: LoadedModel, settings: Settings) -> WorkerPlan:
    """Where executors find the version (shipped with the job, or a shared registry) and how they run it."""
    if args.executor_model_root:
        model_dir, shipped = f"{args.executor_model_root.rstrip('/')}/{model.name}/{model.version}", False
    else:
        model_dir, shipped = ship_version(spark, model), True
    cpus = int(spark.conf.get("spark.task.cpus", "1") or 1)
    return WorkerPlan(
        name=model.name,
        version=model.version,
        sha256=model.metadata["sha256"],
        model_dir=model_dir,
        shipped=shipped,
        settings=settings,
        intra_op_threads=settings.intra_op_threads or cpus,  # one session per Python worker, each with the task's cores
        batch_size=args.batch_size,
        source="",
        answers=pa.schema(answer_fields(model)),
    )


def check_destinations(fs: HadoopFS, dest: Destinations, overwrite: bool) -> None:
    for path in (dest.output, dest.errors):
        if fs.exists(path) and not overwrite:
            raise UsageError(f"{path} exists; --overwrite replaces it")


def prepare(spark: SparkSession, args: argparse.Namespace, model: LoadedModel, plan: WorkerPlan, fs: HadoopFS) -> Prepared:
    from pyspark.errors import AnalysisException

    try:
        if batch_input(model.task).source == FOLDER:
            if args.keep_columns or args.text_column:
                raise UsageError(f"--keep-columns and --text-column are for table inputs; {model.name} reads a folder")
            sizes = model.task.batch_sizes
            records = max(args.batch_size or 0, sizes.cpu, sizes.gpu) * ARROW_BATCHES_IMAGE
            spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(records))
            return prepare_folder(spark, fs, args, model, plan)
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(ARROW_RECORDS_TABLE))
        return prepare_table(spark, args, model, plan)
    except AnalysisException as exc:  # no such path, not readable as the format, ...
        raise UsageError(f"{args.input}: {str(exc).splitlines()[0]}") from None


def run_spark(args: argparse.Namespace, stream: TextIO) -> int:
    """The whole Spark job; returns the exit status (0 all scored, 3 some refused, 2 usage, 1 failed)."""
    started = time.monotonic()
    try:
        settings = Settings.from_env()
        model = driver_model(args, settings)
        dest = destinations(args)
        spark, owned = start_session(args)
    except ModelServeError as exc:
        print(f"error: {exc}", file=stream)
        return exc.exit_code
    label = f"{model.name} v{model.version}"
    progress = Progress(spark, label, stream)
    try:
        fs = HadoopFS(spark)
        check_destinations(fs, dest, args.restart)
        ship_code(spark)
        plan = base_plan(spark, args, model, settings)
        progress.start()
        progress.set_phase("reading the input")
        prepared = prepare(spark, args, model, plan, fs)
        for note in prepared.notes:
            print(note, file=stream)
        prepared.frame = spread(prepared.frame, prepared.partitions, args.partitions, spark.sparkContext.defaultParallelism)
        counts = score_and_write(spark, prepared, dest, args.restart, progress)
    except ModelServeError as exc:
        print(f"error: {exc}", file=stream)
        return exc.exit_code
    except KeyboardInterrupt:  # pyspark cancels the running jobs on SIGINT; what was written is taken back
        print("\ninterrupted: nothing was written; run the same command again", file=stream)
        return EXIT_INTERRUPTED
    except Exception as exc:  # Spark's own: a task failed, an executor was lost, a write was refused
        print(f"error: the Spark job failed, nothing was written: {failure(exc)}", file=stream)
        return EXIT_FAILED
    finally:
        progress.stop()
        spark.sparkContext.setJobDescription(None)
        if owned:
            spark.stop()
    summarize(label, counts, prepared.unit, dest, time.monotonic() - started, stream)
    if model.model_file.cpu:  # a version with an INT8 variant: which file each executor ran, and why
        print(f"model file on the driver: {model.model_file.summary()}", file=stream)
        for ran, tasks in sorted(counts.files.items()):
            print(f"model file on executor {ran} ({tasks} task{'s' if tasks != 1 else ''})", file=stream)
    return EXIT_ROWS_FAILED if counts.failed else EXIT_OK


def summarize(label: str, counts: Counts, unit: str, dest: Destinations, seconds: float, stream: TextIO) -> None:
    rate = counts.total / seconds if seconds > 0 else 0.0
    shown = f"{rate:,.0f}" if rate >= 10 else f"{rate:.2f}"
    print(
        f"{label}: {counts.total:,} {unit}s in = {counts.scored:,} scored + {counts.failed:,} failed"
        f"{f' (see {dest.errors})' if counts.failed else ''}; wrote {dest.output} in {seconds:.1f} s ({shown} {unit}s/s)",
        file=stream,
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`spark-submit service/batch/spark.py MODEL INPUT -o OUTPUT [options]`: the batch command line, on Spark."""
    from service.batch.cli import parse_args

    args = parse_args(argv)
    return run_spark(args, sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

"""Rows/s of the Spark engine on local[2] next to the single-machine scorer, start-up separated from steady state.

    python -m benchmarks.spark_bench --out benchmarks/results/spark.md   # 100,000 reviews, 2,000 images; writes .md + .png
    python -m benchmarks.spark_bench --scale 0.1                          # a quick look, nothing written
    python -m benchmarks.spark_bench --models imdb_sentiment --project ../before --model-root ../before/models \
        --out benchmarks/results/spark_before.md                                   # another checkout's code and models
    python -m benchmarks.spark_bench --out benchmarks/results/spark.md --docs docs/batch-and-spark.md
                                                                                    # and rewrite the docs' cluster sizing

Every run is the command a user types (`python -m service.batch ... [--engine spark
--master local[2]]`), timed end to end in its own process, JVM start included. Each
engine scores each model at two sizes; the steady-state rate is the slope between them,
(n_large - n_small) / (t_large - t_small), and start-up is what the small run took
beyond n_small at that rate: interpreter, JVM and SparkContext start, model load and
checksum, input planning, Python workers. The per-core rate (steady state / cores) is
what the cluster sizing divides by: `sizing` writes that paragraph from the rates
(into the results file, and with --docs between the markers in docs/batch-and-spark.md).

Inputs come from the real data in /work/shared/data (benchmarks may use it, tests may
not): reviews cycle the 1,500 real IMDB reviews of imdb_reviews_sample.csv into a
Parquet file (row groups of 10,000, so Spark splits it as it would a big table); images
cycle the 4,000 cats-vs-dogs JPEGs into a folder tree of 100 per folder.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.report import bars, figure, save_markdown

ROOT = Path(__file__).resolve().parent.parent
DATA = Path("/work/shared/data")
REVIEWS = (10_000, 100_000)  # small and large run per engine: the slope between them is the steady state
IMAGES = (400, 2_000)
ROW_GROUP = 10_000
MASTER = "local[2]"
SPARK_CONF = ["--conf", "spark.ui.enabled=false"]  # no UI port on a shared machine; the UI costs nothing measurable otherwise
ENGINES = ("single machine", "spark local[2]")


@dataclass
class Run:
    engine: str
    model: str
    inputs: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds


@dataclass
class Line:
    """One engine on one model: its two runs and what follows from them."""

    engine: str
    model: str
    small: Run
    large: Run
    cores: int

    @property
    def steady(self) -> float:
        """The slope between the runs; NaN when the large run was not slower (noise swamped the difference)."""
        extra = self.large.seconds - self.small.seconds
        return (self.large.inputs - self.small.inputs) / extra if extra > 0 else math.nan

    @property
    def startup(self) -> float:
        return max(self.small.seconds - self.small.inputs / self.steady, 0.0) if self.steady > 0 else math.nan

    @property
    def per_core(self) -> float:
        return self.steady / self.cores


# ---------------------------------------------------------------- inputs


def write_reviews(path: Path, n: int) -> Path:
    if not path.exists():
        with open(DATA / "imdb_reviews_sample.csv", newline="") as handle:
            texts = [row["review"] for row in csv.DictReader(handle)]
        table = pa.table({"id": list(range(n)), "review": [t for _, t in zip(range(n), itertools.cycle(texts))]})
        pq.write_table(table, path, row_group_size=ROW_GROUP)
    return path


def write_images(folder: Path, n: int) -> Path:
    if not folder.exists():
        photos = sorted((DATA / "cats_vs_dogs_small").rglob("*.jpg"))
        for i, source in zip(range(n), itertools.cycle(photos)):
            target = folder / f"{i // 1000:02d}" / f"{(i // 100) % 10}" / f"{i:06d}_{source.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    return folder


# ---------------------------------------------------------------- runs


def score(engine: str, model: str, source: Path, inputs: int, work: Path, model_root: Path, project: Path = ROOT) -> Run:
    """One end-to-end run as a user types it, with `project`'s code; the job must score every input."""
    out = work / f"{model}-{inputs}-{'spark' if 'spark' in engine else 'local'}.parquet"
    command = [sys.executable, "-m", "service.batch", model, str(source), "-o", str(out), "--model-root", str(model_root), "--overwrite"]
    if "spark" in engine:
        command += ["--engine", "spark", "--master", MASTER, *SPARK_CONF]
    env = os.environ | {"PYTHONPATH": str(project), "PYSPARK_PYTHON": sys.executable}
    started = time.monotonic()
    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    # the job's summary line ("... N of N rows scored" / "N rows in = ..."); a line about the model file may follow it
    summary = next((line for line in reversed(done.stderr.strip().splitlines()) if " scored" in line), "")
    if done.returncode != 0 or not re.search(rf"\b{inputs:,}\b", summary):
        raise SystemExit(f"{engine} {model} {inputs}: exit {done.returncode}\n{done.stderr[-3000:]}")
    run = Run(engine, model, inputs, seconds)
    print(f"  {engine:15} {model:17} {inputs:>8,} inputs {seconds:7.1f} s {run.rate:9,.0f}/s   {summary}", flush=True)
    return run


def measure(args: argparse.Namespace) -> list[Line]:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0))
    jobs = [("imdb_sentiment", [round(n * args.scale) for n in REVIEWS]), ("image_classifier", [round(n * args.scale) for n in IMAGES])]
    jobs = [(model, sizes) for model, sizes in jobs if model in args.models]
    lines = []
    for model, sizes in jobs:
        sources = {
            n: write_reviews(work / f"reviews-{n}.parquet", n) if model == "imdb_sentiment" else write_images(work / f"images-{n}", n)
            for n in sizes
        }
        runs: dict[tuple[str, int], Run] = {}
        for _ in range(args.repeat):  # engines interleaved, so a burst of load elsewhere hits both; the fastest run counts
            for n in sizes:
                for engine in ENGINES:
                    run = score(engine, model, sources[n], n, work, args.model_root, args.project)
                    if (engine, n) not in runs or run.seconds < runs[engine, n].seconds:
                        runs[engine, n] = run
        lines += [Line(engine, model, runs[engine, sizes[0]], runs[engine, sizes[1]], cores) for engine in ENGINES]
    return lines


# ---------------------------------------------------------------- report


def number(value: float, spec: str = ",.0f") -> str:
    return "n/a" if math.isnan(value) else format(value, spec)


def table(lines: list[Line]) -> list[str]:
    rows = [
        "| model | engine | inputs (small / large) | seconds (small / large) | end to end, large (inputs/s) | steady state (inputs/s) | per core (inputs/s) | start-up (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for line in lines:
        rows.append(
            f"| {line.model} | {line.engine} | {line.small.inputs:,} / {line.large.inputs:,} | {line.small.seconds:.1f} / {line.large.seconds:.1f} "
            f"| {line.large.rate:,.0f} | {number(line.steady)} | {number(line.per_core)} | {number(line.startup, '.1f')} |"
        )
    return rows


SIZING_START, SIZING_END = "<!-- sizing: benchmarks/spark_bench.py --docs writes this paragraph -->", "<!-- sizing end -->"
REVIEWS_TARGET, IMAGES_TARGET, HOUR_S = 1_000_000_000, 100_000_000, 3_600


def sizing(lines: list[Line]) -> list[str]:
    """The cluster-sizing paragraph: one billion reviews and 100 million images in an hour, divided by the measured per-core rates."""
    out = ["**Sizing a cluster** from the Spark per-core rates above (start-up is once per job, under 2% of an hour):", ""]
    targets = {"imdb_sentiment": (REVIEWS_TARGET, "reviews"), "image_classifier": (IMAGES_TARGET, "images")}
    for model, (total, noun) in targets.items():
        spark = next((line for line in lines if line.model == model and "spark" in line.engine), None)
        local = next((line for line in lines if line.model == model and "spark" not in line.engine), None)
        if spark is None or math.isnan(spark.per_core):
            continue
        rate = total / HOUR_S
        cores = math.ceil(rate / spark.per_core)
        text = (
            f"- {total:,} {noun} in one hour: {total:,} / {HOUR_S:,} s = {rate:,.0f} {noun}/s; / {spark.per_core:,.0f} per core "
            f"(Spark `{MASTER}` steady state {spark.steady:,.0f}/s on {spark.cores} cores) = **{cores:,} executor cores** "
            f"(e.g. {math.ceil(cores / 16)} executors of 16 cores)"
        )
        if local is not None and not math.isnan(local.per_core):
            text += f"; at the single-machine scorer's {local.per_core:,.0f} per core it would be {math.ceil(rate / local.per_core):,}"
        out.append(text + ". Plan on headroom for reading the input from object storage.")
    return out


def rewrite_docs(path: Path, paragraph: list[str]) -> None:
    """Replace what lies between the sizing markers in `path` with `paragraph`."""
    text = path.read_text()
    start, end = text.index(SIZING_START) + len(SIZING_START), text.index(SIZING_END)
    path.write_text(text[:start] + "\n" + "\n".join(paragraph) + "\n" + text[end:])


def write_markdown(lines: list[Line], path: Path, command: str, load: tuple[float, float]) -> None:
    text = [
        "# Spark engine against the single-machine scorer",
        "",
        f"`{command}`",
        "",
        f"Machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores shared with other work (load average {load[0]:.1f} before, "
        f"{load[1]:.1f} after); Python {platform.python_version()}; Spark on `{MASTER}`; each number the fastest of the runs. "
        "Steady state is the slope between the small and the large run; start-up is the small run's time beyond its inputs at that rate.",
        "",
        *table(lines),
        "",
        "Reviews: a Parquet file of real IMDB reviews (row groups of 10,000); images: real cats-vs-dogs JPEGs (about 320 px) in a folder tree.",
        "",
        *sizing(lines),
        "",
    ]
    save_markdown(path, text)


def write_png(lines: list[Line], path: Path) -> None:
    models = list(dict.fromkeys(line.model for line in lines))
    with figure(path, 1, len(models), size=(6 * len(models), 3.5)) as (_, axes):
        for ax, model in zip(axes[0], models, strict=True):
            mine = [line for line in lines if line.model == model]
            labels = [f"{line.engine}\n{kind}" for line in mine for kind in ("steady state", "end to end")]
            rates = [0.0 if math.isnan(rate) else rate for line in mine for rate in (line.steady, line.large.rate)]
            startup = ", ".join(f"{line.engine} {number(line.startup)} s" for line in mine)
            bars(ax, labels, rates, ["tab:blue", "tab:grey"] * len(mine), f"{model} (start-up: {startup})", "inputs/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-root", type=Path, default=ROOT / "models")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the input sizes (quick checks)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each measurement; the fastest counts (default 1)")
    parser.add_argument(
        "--work", default=os.path.join(tempfile.gettempdir(), "modelserve-spark-bench"), help="generated inputs and outputs"
    )
    parser.add_argument("--out", type=Path, help="Markdown results file (benchmarks/results/spark.md); a PNG is written beside it")
    parser.add_argument(
        "--models", nargs="+", default=["imdb_sentiment", "image_classifier"], choices=["imdb_sentiment", "image_classifier"]
    )
    parser.add_argument("--project", type=Path, default=ROOT, help="the checkout whose code scores (default: this one)")
    parser.add_argument("--docs", type=Path, help="rewrite the cluster-sizing paragraph of this page (docs/batch-and-spark.md)")
    args = parser.parse_args()
    before = os.getloadavg()[0]
    lines = measure(args)
    print("\n".join(table(lines)))
    print("\n".join(sizing(lines)))
    if args.out:
        write_markdown(lines, args.out, "python " + " ".join(sys.argv), (before, os.getloadavg()[0]))
        write_png(lines, args.out.with_suffix(".png"))
    if args.docs:
        rewrite_docs(args.docs, sizing(lines))


if __name__ == "__main__":
    main()

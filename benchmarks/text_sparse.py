"""The text model's cost per review, dense input against sparse input, on identical weights.

    python -m benchmarks.text_sparse [--version 2] [--seconds 3] [--reviews 500]

The dense graph is a registry version exported with a [N, 200,000] `features` input
(imdb_sentiment v2); the sparse graph is the same file rewritten by the export's own
rewrite (training/sparse_input.py: n-gram ids and weights, the first Dense layer a
gather-sum), so both carry the same weights and answer alike (checked here). Measured,
on real reviews (../shared/data/imdb_reviews_sample.csv, else generated ones):

- tokenising per review: `tokenize` with every n-gram's string looked up (how the
  vocabulary was searched before), against the packed n-gram index (service/core/preprocessing.py);
- building the graph's input per review: a dense row, against padded ids and weights;
- the session alone on inputs built beforehand, reviews/s at batch 1 and 64, one
  intra-op thread and all of them;
- review to probability in one process (tokenise, build, run), reviews/s at batch 1 and 64.

Prints a table; writes benchmarks/results/text_sparse.md and .png.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from benchmarks.load import RESULTS, SHARED
from benchmarks.report import bars, figure, save_markdown
from service.core.preprocessing import SPARSE_INPUTS, TextVectorizer, tokenize
from service.core.registry import Registry
from training.sparse_input import sparse_input_graph

ROOT = Path(__file__).resolve().parent.parent
MODEL = "imdb_sentiment"
BATCHES = (1, 64)


def reviews(count: int) -> list[str]:
    sample = SHARED / "imdb_reviews_sample.csv"
    if sample.is_file():
        with open(sample, newline="") as handle:
            return [row["review"] for row, _ in zip(csv.DictReader(handle), range(count))]
    from tests.generate import review

    rng = np.random.default_rng(0)
    return [review(rng, bool(i % 2), length=230) for i in range(count)]


def per_second(work: Callable[[], object], items: int, seconds: float) -> float:
    """Items/s of `work` (which handles `items` items per call), the best of three spans of `seconds` / 3."""
    work()
    best = 0.0
    for _ in range(3):
        done, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds / 3 or done == 0:
            work()
            done += items
        best = max(best, done / elapsed)
    return best


def string_lookup(vectorizer: TextVectorizer, text: str) -> list[int]:
    """The vocabulary search before the n-gram index: every n-gram's string built and looked up."""
    return [i for i in map(vectorizer.vocabulary.get, tokenize(text, vectorizer.ngram_max)) if i is not None]


def session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


Row = tuple[str, str, float]  # (what, configuration, reviews/s)


def report(rows: list[Row], what: str, config: str, rate: float) -> None:
    rows.append((what, config, rate))
    print(f"| {what} | {config} | {rate:,.0f} | {1e6 / rate:,.1f} |", flush=True)


def preprocessing_rows(vectorizer: TextVectorizer, texts: list[str], seconds: float) -> list[Row]:
    """Tokenising and the vocabulary search, before and now; building each graph's input."""
    rows: list[Row] = []
    n, tokenise, build = len(texts), "tokenise + vocabulary search", "build the graph input"
    report(
        rows, tokenise, "n-gram strings looked up (before)", per_second(lambda: [string_lookup(vectorizer, t) for t in texts], n, seconds)
    )
    report(rows, tokenise, "packed n-gram index (now)", per_second(lambda: [vectorizer.token_ids(t) for t in texts], n, seconds))
    dense = per_second(lambda: [vectorizer.transform([t]) for t in texts[:100]], 100, seconds)
    report(rows, build, "dense row (tokenise, TF-IDF, 200,000 floats)", dense)
    report(
        rows,
        build,
        "padded ids + weights (tokenise, TF-IDF)",
        per_second(lambda: [vectorizer.transform_sparse([t]) for t in texts], n, seconds),
    )
    return rows


def session_rows(
    graphs: dict[str, onnx.ModelProto], vectorizer: TextVectorizer, texts: list[str], seconds: float
) -> tuple[list[Row], float]:
    """The session alone on inputs built beforehand, and review to probability, per graph and batch size; max |dense - sparse|."""
    feeds: dict[str, Callable[[list[str]], dict[str, np.ndarray]]] = {
        "dense": lambda batch: {"features": vectorizer.transform(batch)},
        "sparse": lambda batch: dict(zip(SPARSE_INPUTS, vectorizer.transform_sparse(batch), strict=True)),
    }
    sessions = {(kind, threads): session(graph, threads) for kind, graph in graphs.items() for threads in (1, 0)}
    probe = texts[:64]
    answers = [sessions[kind, 1].run(None, feeds[kind](probe))[0] for kind in ("dense", "sparse")]
    rows: list[Row] = []
    for batch in BATCHES:
        chunks = [texts[i : i + batch] for i in range(0, min(len(texts), 4 * 64), batch)]
        items = sum(map(len, chunks))
        for kind in graphs:
            built = [feeds[kind](chunk) for chunk in chunks]
            for threads in (1, 0):
                run = sessions[kind, threads].run
                config = f"{kind}, batch {batch}, {threads or 'all'} thread{'s' if threads != 1 else ''}"
                rate = per_second(lambda run=run, built=built: [run(None, f) for f in built], items, seconds)
                report(rows, "session alone (inputs built beforehand)", config, rate)
            run, feed = sessions[kind, 1].run, feeds[kind]
            rate = per_second(lambda run=run, feed=feed, chunks=chunks: [run(None, feed(c)) for c in chunks], items, seconds)
            report(rows, "review to probability", f"{kind}, batch {batch}, 1 thread", rate)
    return rows, float(np.max(np.abs(answers[0] - answers[1])))


def measure(args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    """(rows of (what, configuration, reviews/s)), notes."""
    version = Registry(Path(args.models)).get(MODEL, args.version)
    metadata = version.read_metadata()
    if [i["name"] for i in metadata["inputs"]] != ["features"]:
        raise SystemExit(f"{MODEL} v{args.version} is not a dense-input version; name one with --version (v2 is)")
    vectorizer = TextVectorizer.from_json(json.loads((version.path / metadata["preprocessing"]["vocabulary_file"]).read_text()))
    started = time.perf_counter()
    vectorizer.build_index()
    index_s = time.perf_counter() - started
    dense_graph = onnx.load(version.model_path)
    graphs = {"dense": dense_graph, "sparse": sparse_input_graph(dense_graph, "features")}
    texts = reviews(args.reviews)
    print("| what | configuration | reviews/s | µs per review |\n|---|---|---:|---:|", flush=True)
    rows = preprocessing_rows(vectorizer, texts, args.seconds)
    session_part, difference = session_rows(graphs, vectorizer, texts, args.seconds)
    notes = [
        f"{MODEL} v{args.version} ({vectorizer.size:,} n-grams, 1..{vectorizer.ngram_max}) and its sparse rewrite; {len(texts)} real reviews "
        f"of {np.mean([len(t.split()) for t in texts]):.0f} words on average; max |dense - sparse| = {difference:.1e} on 64 of them.",
        f"Building the n-gram index: {index_s:.2f} s once per model load. {len(os.sched_getaffinity(0))} cores, "
        f"load average {os.getloadavg()[0]:.1f} at the end; each rate the best of three spans of {args.seconds / 3:.1f} s.",
    ]
    return rows + session_part, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=str(ROOT / "models"))
    parser.add_argument("--version", type=int, default=2, help="a dense-input version of imdb_sentiment")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--reviews", type=int, default=500)
    parser.add_argument("--out", default="text_sparse", help="results file stem under benchmarks/results/")
    args = parser.parse_args()
    rows, notes = measure(args)
    lines = [
        "# The text model, dense input against sparse input",
        "",
        "`python -m benchmarks.text_sparse "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "models")
        + "`",
        "",
        *notes,
        "",
        "| what | configuration | reviews/s | µs per review |",
        "|---|---|---:|---:|",
        *[f"| {what} | {config} | {rate:,.0f} | {1e6 / rate:,.1f} |" for what, config, rate in rows],
    ]
    save_markdown(RESULTS / f"{args.out}.md", lines)
    groups = list(dict.fromkeys(what for what, _, _ in rows))
    with figure(RESULTS / f"{args.out}.png", 1, len(groups), size=(5.5 * len(groups), 4.5)) as (_, axes):
        for ax, group in zip(axes[0], groups, strict=True):
            mine = [(config, rate) for what, config, rate in rows if what == group]
            colors = ["tab:blue" if "sparse" in c or "now" in c or "ids" in c else "tab:grey" for c, _ in mine]
            bars(ax, [c.replace(", ", "\n", 1) for c, _ in mine], [r for _, r in mine], colors, group, "reviews/s (log scale)")
            ax.set_xscale("log")


if __name__ == "__main__":
    main()

"""Served versions compared on short reviews: the first sentence of every test review (run once, after v2 was chosen).

nice -n 19 python -m experiments.imdb_short_compare 1 2
"""

from __future__ import annotations

import sys

import numpy as np

from service.core.registry import Registry
from service.core.runtime import load_model
from training.datasets import load_reviews
from training.imdb_sentiment import first_sentence


def main() -> None:
    data = load_reviews("../shared/data/aclImdb.tar.gz")
    short = [first_sentence(t) for t in data.test_texts]
    truth = data.test_labels.astype(bool)
    words = np.array([len(s.split()) for s in short])
    print(f"{len(short):,} first sentences, median {np.median(words):.0f} words")
    print("| version | test accuracy (whole reviews) | first sentences | first sentences of 4-12 words |\n|---|---|---|---|")
    for version in map(int, sys.argv[1:]):
        model = load_model(Registry("models").get("imdb_sentiment", version), ["CPUExecutionProvider"])
        answers = np.concatenate([[a["label"] == "positive" for a in model.predict(short[i : i + 256])] for i in range(0, len(short), 256)])
        few = words <= 12
        accuracy = model.metadata["metrics"]["test"]["accuracy"]
        print(
            f"| v{version} | {accuracy:.4f} | {(answers == truth).mean():.4f} | {(answers[few] == truth[few]).mean():.4f} ({few.sum():,}) |",
            flush=True,
        )


if __name__ == "__main__":
    main()

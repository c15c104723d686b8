"""IMDB sentiment: raw English review text -> positive / negative.

Seed (the IMDB binary classifier of the notes): multi-hot vectors of the 10,000 most
frequent words -> Dense(16, relu) -> Dense(16, relu) -> Dense(1, sigmoid), rmsprop,
binary cross-entropy, 4 epochs, batch 512. `--variant seed` trains exactly that.

Default variant `tfidf`: unigrams + bigrams ("not good" carries what "good" alone
does not), TF-IDF weighted, into the same Dense stack with dropout. Tokenising and
the vocabulary live in service/core/preprocessing.py, outside the ONNX graph, because
tf2onnx cannot convert string ops; the service imports the same code.

As in the seed, a first run holds out 20% of the training reviews to draw the
validation curves, then the final model is fitted on all training reviews for the
same number of epochs and evaluated once on the test split.
"""

from __future__ import annotations

import argparse
from typing import Any

import keras
import numpy as np
import scipy.sparse as sp

from service.core.preprocessing import VOCABULARY_FILE, TextVectorizer
from training.datasets import SENTIMENT_LABELS, load_reviews
from training.evaluate import classification_test
from training.export import PARITY_MIN_SAMPLES, TensorSpec, parity_inputs
from training.progress import fit_verbosity, log
from training.publish import TrainingResult

NAME = "imdb_sentiment"
VARIANTS: dict[str, dict[str, Any]] = {
    "seed": {
        "mode": "multi_hot",
        "ngram_max": 1,
        "max_tokens": 10_000,
        "dropout": 0.0,
        "epochs": 4,
        "batch_size": 512,
        "learning_rate": 1e-3,
    },
    "tfidf": {"mode": "tfidf", "ngram_max": 2, "max_tokens": 40_000, "dropout": 0.5, "epochs": 6, "batch_size": 128, "learning_rate": 1e-3},
}
VALIDATION_FRACTION = 0.2
VECTORIZE_CHUNK = 2_000
PARITY_TEST_ROWS = 200


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", help="aclImdb folder or .tar.gz, or a .csv/.jsonl with text and label columns (default: download aclImdb)"
    )
    parser.add_argument("--test-data", help="separate .csv/.jsonl test set (for table data)")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="tfidf")
    parser.add_argument("--max-tokens", type=int, help="vocabulary size (default: the variant's)")
    parser.add_argument("--epochs", type=int, help="training epochs (default: the variant's)")
    parser.add_argument("--batch-size", type=int, help="default: the variant's")


class SparseBatches(keras.utils.PyDataset):
    """Densify a sparse matrix one batch at a time: 25k x 40k dense floats would be 4 GB."""

    def __init__(self, x: sp.csr_matrix, y: np.ndarray | None, batch_size: int, shuffle: bool, seed: int = 0) -> None:
        super().__init__()
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.rng = np.random.default_rng(seed)
        self.order = np.arange(x.shape[0])

    def __len__(self) -> int:
        return int(np.ceil(self.x.shape[0] / self.batch_size))

    def __getitem__(self, index: int) -> Any:
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        batch = self.x[rows].toarray()
        return batch if self.y is None else (batch, self.y[rows])

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.rng.shuffle(self.order)


def vectorize(vectorizer: TextVectorizer, texts: list[str]) -> sp.csr_matrix:
    chunks = [sp.csr_matrix(vectorizer.transform(texts[i : i + VECTORIZE_CHUNK])) for i in range(0, len(texts), VECTORIZE_CHUNK)]
    return sp.vstack(chunks, format="csr")


def build_model(input_size: int, dropout: float, learning_rate: float) -> keras.Model:
    layers: list[keras.layers.Layer] = [keras.Input((input_size,), name="features"), keras.layers.Dense(16, activation="relu")]
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(16, activation="relu"))
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(1, activation="sigmoid"))
    model = keras.Sequential(layers, name=NAME)
    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate), loss="binary_crossentropy", metrics=["accuracy"])
    return model


def validation_run(x_train: sp.csr_matrix, y_train: np.ndarray, config: dict[str, Any], seed: int) -> dict[str, list[float]]:
    """The seed's first run: hold out VALIDATION_FRACTION of the training reviews to draw the curves."""
    order = np.random.RandomState(seed).permutation(len(y_train))
    n_val = int(len(order) * VALIDATION_FRACTION)
    val_idx, fit_idx = order[:n_val], order[n_val:]
    log("train", f"validation run: {len(fit_idx):,} reviews, {n_val:,} held out, {config['epochs']} epochs")
    probe = build_model(x_train.shape[1], config["dropout"], config["learning_rate"])
    return probe.fit(
        SparseBatches(x_train[fit_idx], y_train[fit_idx], config["batch_size"], shuffle=True, seed=seed),
        validation_data=SparseBatches(x_train[val_idx], y_train[val_idx], 1024, shuffle=False),
        epochs=config["epochs"],
        verbose=fit_verbosity(),
    ).history


def _records(args: argparse.Namespace, config: dict[str, Any], vectorizer: TextVectorizer) -> dict[str, Any]:
    """The architecture and training blocks of metadata.json."""
    return {
        "architecture": {
            "variant": args.variant,
            "layers": ["Dense(16, relu)", "Dense(16, relu)", "Dense(1, sigmoid)"],
            "dropout": config["dropout"],
            "input": f"{config['mode']} n-grams 1..{config['ngram_max']}, {vectorizer.size} features",
        },
        "training": {
            "optimizer": "rmsprop",
            "learning_rate": config["learning_rate"],
            "loss": "binary_crossentropy",
            "epochs": config["epochs"],
            "batch_size": config["batch_size"],
            "seed": args.seed,
            "validation_fraction": VALIDATION_FRACTION,
            "final_fit": "all training reviews, same epochs (the seed's procedure)",
        },
    }


def train(args: argparse.Namespace) -> TrainingResult:
    config = dict(VARIANTS[args.variant])
    for key in ("max_tokens", "epochs", "batch_size"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    keras.utils.set_random_seed(args.seed)

    log("data", f"loading reviews from {args.data or 'the aclImdb download'}")
    data = load_reviews(args.data, args.test_data, seed=args.seed)
    log("data", f"{len(data.train_texts):,} train / {len(data.test_texts):,} test reviews")

    log("vocab", f"fitting a {config['mode']} vectoriser, n-grams up to {config['ngram_max']}, {config['max_tokens']:,} tokens")
    vectorizer = TextVectorizer.fit(data.train_texts, config["max_tokens"], config["ngram_max"], config["mode"])
    x_train = vectorize(vectorizer, data.train_texts)
    x_test = vectorize(vectorizer, data.test_texts)
    y_train, y_test = data.train_labels, data.test_labels

    history = validation_run(x_train, y_train, config, args.seed)
    log("train", f"final model: all {len(y_train):,} training reviews, {config['epochs']} epochs")
    model = build_model(vectorizer.size, config["dropout"], config["learning_rate"])
    model.fit(
        SparseBatches(x_train, y_train, config["batch_size"], shuffle=True, seed=args.seed),
        epochs=config["epochs"],
        verbose=fit_verbosity(),
    )

    probabilities = model.predict(SparseBatches(x_test, None, 1024, shuffle=False), verbose=0).ravel()
    truth = y_test.astype(int)
    test_metrics, matrix = classification_test(truth, (probabilities >= 0.5).astype(int), SENTIMENT_LABELS)

    parity_rows = np.random.RandomState(args.seed).choice(len(y_test), size=min(len(y_test), PARITY_TEST_ROWS), replace=False)
    return TrainingResult(
        name=NAME,
        task="binary_classification",
        model=model,
        input_spec=TensorSpec("features", "float32", (None, vectorizer.size)),
        output_name="probability",
        labels=list(SENTIMENT_LABELS),
        preprocessing={
            "kind": "text",
            "vocabulary_file": VOCABULARY_FILE,
            "mode": vectorizer.mode,
            "ngram_max": vectorizer.ngram_max,
            "vocabulary_size": vectorizer.size,
            "tokenizer": "service.core.preprocessing.tokenize",
            "threshold": 0.5,
        },
        assets={VOCABULARY_FILE: vectorizer.to_json()},
        metrics={"test": test_metrics, "validation_run": {k: float(v[-1]) for k, v in history.items()}},
        history={k: [float(x) for x in v] for k, v in history.items()},
        history_metric="accuracy",
        parity_inputs=parity_inputs(x_test[parity_rows].toarray(), x_train[:PARITY_MIN_SAMPLES].toarray(), most=PARITY_TEST_ROWS),
        data={"dataset": "IMDB movie reviews", **data.source, "synthetic": False},
        **_records(args, config, vectorizer),
        test_items=list(data.test_texts),
        test_targets=[SENTIMENT_LABELS[int(y)] for y in truth],
        confusion_matrix=matrix,
    )

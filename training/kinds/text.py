"""The text kind: a classifier of the user's labelled texts, under their name.

    python -m training text --name NAME --data FILE --text-column C --label-column L    # CSV, JSONL or Parquet

Two labels or more: two end in a sigmoid (the probability of the second label, in
sorted order), more in a softmax. Texts become bag-of-n-gram vectors (TF-IDF) in
service/core/preprocessing.py, the code the service runs, outside the ONNX graph
(tf2onnx cannot convert string ops), into a small Dense network, exported with sparse input (training/sparse_input.py: each
text's n-gram ids and weights, the first Dense layer a gather-sum).

The recipe is chosen on validation data, as the IMDB trainer's was: with `--variant
auto` (the default) every candidate trains on 80% of the training texts and is scored
on the other 20%; the most accurate one is then fitted on all training texts for the
same number of epochs and evaluated once on the test split. Candidates: `nb` (two
labels only: TF-IDF scaled by the naive-Bayes log-count ratio into a logistic
regression, IMDB's v2), `linear` (TF-IDF into a softmax or logistic regression) and
`tfidf` (TF-IDF into Dense(16) x 2 with dropout, IMDB's v1).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import scipy.sparse as sp

from service.core.errors import DataError
from service.core.preprocessing import VOCABULARY_FILE, TextVectorizer
from training.datasets import file_record, find_column, fingerprint, read_frame, split_indices
from training.evaluate import classification_test
from training.export import PARITY_MIN_SAMPLES, TensorSpec, parity_inputs
from training.progress import fit_verbosity, log
from training.publish import TrainingResult

VARIANTS: dict[str, dict[str, Any]] = {
    "nb": {"mode": "tfidf", "ngram_max": 3, "max_tokens": 200_000, "nb": True, "hidden": (), "dropout": 0.0,
           "optimizer": "adam", "epochs": 6, "batch_size": 128, "learning_rate": 0.02},
    "linear": {"mode": "tfidf", "ngram_max": 2, "max_tokens": 100_000, "nb": False, "hidden": (), "dropout": 0.0,
               "optimizer": "adam", "epochs": 6, "batch_size": 128, "learning_rate": 0.02},
    "tfidf": {"mode": "tfidf", "ngram_max": 2, "max_tokens": 40_000, "nb": False, "hidden": (16, 16), "dropout": 0.5,
              "optimizer": "rmsprop", "epochs": 6, "batch_size": 128, "learning_rate": 1e-3},
}  # fmt: skip
BINARY_ONLY = ("nb",)  # the naive-Bayes ratio compares two labels
AUTO = "auto"
VALIDATION_FRACTION = 0.2
TEST_FRACTION = 0.2
PARITY_TEST_ROWS = 200
NB_ALPHA = 1.0  # Laplace smoothing of the log-count ratio
PREDICT_CHUNK = 256
EXAMPLE_TEXTS = 3  # test texts recorded in metadata for clients to start from (the playground)
EXAMPLE_CHARS = 300
NB_RECORD = "naive-Bayes log-count ratio (alpha 1, binarised training features) times TF-IDF while training; folded into the first Dense kernel for export"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="CSV, JSONL or Parquet: one text and its label per row")
    parser.add_argument("--text-column", default="text", help="the column of texts (default: %(default)s, any case)")
    parser.add_argument("--label-column", default="label", help="the column of labels (default: %(default)s, any case)")
    parser.add_argument(
        "--test-data", help="a separate test file (same columns); default: the rows whose `split` column says test, else a seeded 20%%"
    )
    parser.add_argument("--variant", choices=[AUTO, *VARIANTS], default=AUTO, help="recipe; auto (default): the best on validation data")
    parser.add_argument("--max-tokens", type=int, help="vocabulary size (default: the variant's)")
    parser.add_argument("--epochs", type=int, help="training epochs (default: the variant's)")
    parser.add_argument("--batch-size", type=int, help="default: the variant's")
    parser.add_argument("--learning-rate", type=float, help="default: the variant's")


# ---------------------------------------------------------------- data


@dataclass
class LabelledTexts:
    classes: list[str]  # sorted; a text's label is its index here
    train_texts: list[str]
    train_labels: np.ndarray
    test_texts: list[str]
    test_labels: np.ndarray
    source: dict[str, Any] = field(default_factory=dict)


def _read_texts(path: Path, text_column: str, label_column: str) -> tuple[list[str], list[str], list[str] | None]:
    """(texts, labels as text, the split column or None); DataError for a missing column or a missing cell."""
    frame = read_frame(path)
    if frame.empty:
        raise DataError(f"{path}: no rows")
    columns = [str(c) for c in frame.columns]
    text_col = find_column(columns, text_column, "--text-column", path)
    label_col = find_column(columns, label_column, "--label-column", path)
    split_col = next((c for c in columns if c.lower() == "split" and c not in (text_col, label_col)), None)
    for column in (text_col, label_col):
        missing = int(frame[column].isna().sum())
        if missing:
            raise DataError(f"{path}: column {column!r} has {missing} empty cell(s); every row needs a text and a label")
    texts = [str(t) for t in frame[text_col]]
    for row, text in enumerate(texts):
        if not text.strip():
            raise DataError(f"{path}: row {row} has an empty text")
    labels = [str(v) for v in frame[label_col]]
    splits = [str(s).lower() for s in frame[split_col]] if split_col else None
    return texts, labels, splits


def load_texts(args: argparse.Namespace) -> LabelledTexts:
    """The user's table split into train and test: --test-data, its split column, or a seeded random 20%."""
    path = Path(args.data)
    texts, labels, splits = _read_texts(path, args.text_column, args.label_column)
    records = [file_record(path)]
    if args.test_data:
        test_texts, test_labels, _ = _read_texts(Path(args.test_data), args.text_column, args.label_column)
        records.append(file_record(Path(args.test_data)))
        train_idx, rule = list(range(len(texts))), "separate --test-data file"
        texts, labels = texts + test_texts, labels + test_labels
        test_idx = list(range(len(train_idx), len(texts)))
    elif splits is not None:
        train_idx = [i for i, s in enumerate(splits) if s == "train"]
        test_idx = [i for i, s in enumerate(splits) if s == "test"]
        rule = "the table's split column"
    else:
        train_idx, test_idx = (list(map(int, part)) for part in split_indices(len(texts), TEST_FRACTION, args.seed))
        rule = f"seeded random split, test fraction {TEST_FRACTION}, seed {args.seed}"
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise DataError(f"{path}: the label column has one value ({classes[0]!r}); a classifier needs at least two labels")
    if not train_idx or not test_idx:
        raise DataError(f"{path}: {len(train_idx)} training and {len(test_idx)} test rows; both are needed")
    unseen = sorted({labels[i] for i in test_idx} - {labels[i] for i in train_idx})
    if unseen:
        raise DataError(f"{path}: labels {unseen[:10]} are in the test rows only; every label needs training rows")
    y = np.array([classes.index(label) for label in labels], np.int64)
    digest = fingerprint([(f"{i}", f"{labels[i]}\0{texts[i]}") for i in train_idx + test_idx])
    source = {
        "files": records,
        "split": rule,
        "samples": {"train": len(train_idx), "test": len(test_idx)},
        "class_counts": {c: int((y[train_idx] == k).sum()) for k, c in enumerate(classes)},
        "fingerprint": digest,
    }
    return LabelledTexts(classes, [texts[i] for i in train_idx], y[train_idx], [texts[i] for i in test_idx], y[test_idx], source)


# ---------------------------------------------------------------- the model


def vectorize(vectorizer: TextVectorizer, texts: list[str]) -> sp.csr_matrix:
    values, columns, starts = vectorizer.transform_rows(texts)
    return sp.csr_matrix((values, columns, starts), shape=(len(texts), vectorizer.size))


def nb_ratio(x: sp.csr_matrix, y: np.ndarray) -> np.ndarray:
    """Naive-Bayes log-count ratio per feature over binarised rows: log((p/|p|1) / (q/|q|1)), p and q smoothed by NB_ALPHA."""
    present = (x > 0).astype(np.float64)
    p = NB_ALPHA + np.asarray(present[y == 1].sum(axis=0)).ravel()
    q = NB_ALPHA + np.asarray(present[y == 0].sum(axis=0)).ravel()
    return np.log((p / p.sum()) / (q / q.sum())).astype(np.float32)


def build_model(
    input_size: int, config: dict[str, Any], sparse: bool = False, classes: int = 2, name: str = "text_classifier"
) -> keras.Model:
    """The Dense stack, ending in a sigmoid (two classes) or a softmax; `sparse` takes SciPy/TF sparse rows (training), otherwise dense `features` (export)."""
    layers: list[keras.layers.Layer] = [keras.Input((input_size,), name="features", sparse=sparse)]
    for units in config["hidden"]:
        layers.append(keras.layers.Dense(units, activation="relu"))
        if config["dropout"]:
            layers.append(keras.layers.Dropout(config["dropout"]))
    binary = classes == 2
    layers.append(keras.layers.Dense(1, activation="sigmoid") if binary else keras.layers.Dense(classes, activation="softmax"))
    model = keras.Sequential(layers, name=name)
    rate = config["learning_rate"]
    optimizer = keras.optimizers.RMSprop(rate) if config["optimizer"] == "rmsprop" else keras.optimizers.Adam(rate)
    model.compile(optimizer=optimizer, loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def fit(
    x: sp.csr_matrix,
    y: np.ndarray,
    config: dict[str, Any],
    validation: tuple[sp.csr_matrix, np.ndarray] | None = None,
    classes: int = 2,
    name: str = "text_classifier",
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train on sparse rows (NB-scaled when the variant says so); return the dense export model, ratios folded in, and the history.

    Sparse rows, not densified batches: 200,000 features x 25,000 reviews do not fit densely.
    """
    ratio = nb_ratio(x, y) if config["nb"] else np.ones(x.shape[1], np.float32)
    scale = sp.diags(ratio)
    trained = build_model(x.shape[1], config, sparse=True, classes=classes, name=name)
    validation_data = None if validation is None else (sp.csr_matrix(validation[0] @ scale), validation[1])
    history = trained.fit(
        sp.csr_matrix(x @ scale),
        y,
        batch_size=config["batch_size"],
        epochs=config["epochs"],
        shuffle=True,
        validation_data=validation_data,
        verbose=fit_verbosity(),
    ).history
    exported = build_model(x.shape[1], config, classes=classes, name=name)
    weights = trained.get_weights()
    weights[0] = weights[0] * ratio[:, None]  # (x * r) @ W == x @ (r[:, None] * W)
    exported.set_weights(weights)
    return exported, {k: [float(v) for v in values] for k, values in history.items()}


def predict(model: keras.Model, x: sp.csr_matrix, chunk: int = PREDICT_CHUNK) -> np.ndarray:
    """Probabilities for sparse rows, densified a chunk at a time (25,000 x 200,000 floats would be 20 GB):
    (n,) of the second label for a sigmoid, (n, classes) for a softmax."""
    parts = [model.predict(x[i : i + chunk].toarray(), batch_size=chunk, verbose=0) for i in range(0, x.shape[0], chunk)]
    if not parts:
        return np.zeros(0, np.float32)
    out = np.concatenate(parts)
    return out.ravel() if out.shape[1] == 1 else out


def predicted_labels(probabilities: np.ndarray) -> np.ndarray:
    return (probabilities >= 0.5).astype(np.int64) if probabilities.ndim == 1 else probabilities.argmax(axis=1)


# ---------------------------------------------------------------- the recipe, chosen on validation data


def configure(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    config = dict(VARIANTS[variant])
    for key in ("max_tokens", "epochs", "batch_size", "learning_rate"):
        if getattr(args, key, None) is not None:
            config[key] = getattr(args, key)
    return config


def validation_run(data: LabelledTexts, variant: str, args: argparse.Namespace) -> tuple[dict[str, list[float]], float]:
    """Fit `variant` on 80% of the training texts (its own vocabulary) and score it on the other 20%: (history, accuracy)."""
    config, classes = configure(variant, args), len(data.classes)
    order = np.random.RandomState(args.seed).permutation(len(data.train_labels))
    n_val = max(1, int(len(order) * VALIDATION_FRACTION))
    val_idx, fit_idx = order[:n_val], order[n_val:]
    texts = [data.train_texts[i] for i in fit_idx]
    vectorizer = TextVectorizer.fit(texts, config["max_tokens"], config["ngram_max"], config["mode"])
    x_fit, x_val = vectorize(vectorizer, texts), vectorize(vectorizer, [data.train_texts[i] for i in val_idx])
    y_fit, y_val = data.train_labels[fit_idx], data.train_labels[val_idx]
    keras.utils.set_random_seed(args.seed)
    model, history = fit(x_fit, y_fit, config, validation=(x_val, y_val), classes=classes)
    accuracy = float((predicted_labels(predict(model, x_val)) == y_val).mean())
    log("validate", f"{variant}: validation accuracy {accuracy:.4f} ({len(fit_idx):,} texts fitted, {n_val:,} held out)")
    return history, accuracy


def choose_variant(data: LabelledTexts, args: argparse.Namespace) -> tuple[str, dict[str, list[float]], dict[str, float]]:
    """(variant, its validation history, every candidate's validation accuracy): the best candidate, the first on a tie."""
    candidates = [args.variant] if args.variant != AUTO else [v for v in VARIANTS if len(data.classes) == 2 or v not in BINARY_ONLY]
    if args.variant in BINARY_ONLY and len(data.classes) > 2:
        raise DataError(f"--variant {args.variant} compares two labels; this data has {len(data.classes)}: use linear, tfidf or auto")
    runs = {variant: validation_run(data, variant, args) for variant in candidates}
    scores = {variant: accuracy for variant, (_, accuracy) in runs.items()}
    best = max(candidates, key=lambda v: scores[v])  # max keeps the first of equals
    return best, runs[best][0], scores


def _records(
    variant: str, config: dict[str, Any], vectorizer: TextVectorizer, classes: int, scores: dict[str, float], seed: int
) -> dict[str, Any]:
    """The architecture and training blocks of metadata.json."""
    dropout = f", Dropout({config['dropout']})" if config["dropout"] else ""
    head = "Dense(1, sigmoid)" if classes == 2 else f"Dense({classes}, softmax)"
    chosen = ", ".join(f"{v} {a:.4f}" for v, a in scores.items())
    return {
        "architecture": {
            "variant": variant,
            "layers": [f"Dense({u}, relu){dropout}" for u in config["hidden"]] + [head],
            "dropout": config["dropout"],
            "nb_weighting": NB_RECORD if config["nb"] and classes == 2 else None,
            "input": f"{config['mode']} n-grams 1..{config['ngram_max']}, {vectorizer.size} features",
        },
        "training": {
            "optimizer": config["optimizer"],
            "learning_rate": config["learning_rate"],
            "loss": "binary_crossentropy" if classes == 2 else "sparse_categorical_crossentropy",
            "epochs": config["epochs"],
            "batch_size": config["batch_size"],
            "seed": seed,
            "validation_fraction": VALIDATION_FRACTION,
            "final_fit": "all training texts, same epochs",
            "chosen_by": f"validation accuracy on {VALIDATION_FRACTION:.0%} of the training texts: {chosen}",
        },
    }


def preprocessing(vectorizer: TextVectorizer) -> dict[str, Any]:
    return {
        "kind": "text",
        "vocabulary_file": VOCABULARY_FILE,
        "mode": vectorizer.mode,
        "ngram_max": vectorizer.ngram_max,
        "vocabulary_size": vectorizer.size,
        "tokenizer": "service.core.preprocessing.tokenize",
        "threshold": 0.5,
    }


def train(args: argparse.Namespace) -> TrainingResult:
    data = load_texts(args)
    log("data", f"{len(data.train_texts):,} train / {len(data.test_texts):,} test texts, labels {data.classes}")
    variant, history, scores = choose_variant(data, args)
    config, classes = configure(variant, args), len(data.classes)
    log("train", f"{variant} chosen; final model on all {len(data.train_texts):,} training texts, {config['epochs']} epochs")
    vectorizer = TextVectorizer.fit(data.train_texts, config["max_tokens"], config["ngram_max"], config["mode"])
    x_train, x_test = vectorize(vectorizer, data.train_texts), vectorize(vectorizer, data.test_texts)
    keras.utils.set_random_seed(args.seed)
    model, _ = fit(x_train, data.train_labels, config, classes=classes, name=args.name.replace("-", "_"))
    test_metrics, matrix = classification_test(data.test_labels, predicted_labels(predict(model, x_test)), data.classes)
    log("test", f"accuracy {test_metrics['accuracy']:.4f}")
    rows = np.random.RandomState(args.seed).choice(len(data.test_texts), size=min(len(data.test_texts), PARITY_TEST_ROWS), replace=False)
    return TrainingResult(
        name=args.name,
        task="binary_classification" if classes == 2 else "multiclass_classification",
        model=model,
        input_spec=TensorSpec("features", "float32", (None, vectorizer.size)),
        output_name="probability" if classes == 2 else "probabilities",
        labels=list(data.classes),
        preprocessing=preprocessing(vectorizer),
        assets={VOCABULARY_FILE: vectorizer.to_json()},
        metrics={"test": test_metrics, "validation": scores},
        history=history,
        history_metric="accuracy",
        parity_inputs=parity_inputs(x_test[rows].toarray(), x_train[:PARITY_MIN_SAMPLES].toarray(), most=PARITY_TEST_ROWS),
        data={
            "dataset": Path(args.data).name,
            **data.source,
            "synthetic": False,
            "examples": [t[:EXAMPLE_CHARS] for t in data.test_texts[:EXAMPLE_TEXTS]],
        },
        **_records(variant, config, vectorizer, classes, scores, args.seed),
        test_items=list(data.test_texts),
        test_targets=[data.classes[int(y)] for y in data.test_labels],
        confusion_matrix=matrix,
        profile_inputs=list(data.train_texts),
        sparse_input=True,
    )


def profile_data(args: argparse.Namespace, preprocessing: dict[str, Any]) -> tuple[list[Any], list[Any], dict[str, Any]]:
    """Training texts, test texts and the data's record, for a reference profile (`python -m training profile`)."""
    data = load_texts(args)
    log("data", f"{len(data.train_texts):,} training texts to profile, {len(data.test_texts):,} test texts to answer")
    return list(data.train_texts), list(data.test_texts), data.source

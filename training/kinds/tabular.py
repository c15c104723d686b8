"""The tabular kind: a regressor of one numeric column of the user's table, under their name.

    python -m training tabular --name NAME --data FILE --target T [--features A B ...]    # CSV, JSONL or Parquet

Every other column is a feature unless --features names them. A numeric column is
scaled with the training rows' mean and std (log(1 + x) first when it is skewed and never
negative); a text column is categorical, one-hot with the categories seen in the
training file, recorded in scaler.json and metadata, so the service takes the row as
the user has it ({"colour": "red", "area": 54.0}). The target is standardised for
training and the exported graph scales its output back, so any unit works.

As the Boston trainer does (the seed's regression example): Dense(64, relu) x 2 ->
Dense(1), K-fold validation on the training rows to report how well the recipe does
(and draw it), then the final model on all training rows, evaluated once on the test
rows. The default variant is Boston's `robust`: Huber loss, five networks averaged.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from service.core.errors import DataError
from service.core.preprocessing import SCALER_FILE, StandardScaler, TableEncoder, category_text
from training.datasets import file_record, find_column, fingerprint, read_frame, split_indices
from training.export import TensorSpec, parity_inputs
from training.plots import plot_kfold
from training.progress import fit_verbosity, log
from training.publish import TrainingResult

_NETWORK = {"width": 64, "depth": 2, "l2": 0.0, "dropout": 0.0}  # the seed's Dense(64) x 2, no regularisation
VARIANTS: dict[str, dict[str, Any]] = {
    "seed": _NETWORK | {"loss": "mse", "epochs": 80, "ensemble": 1},
    "robust": _NETWORK | {"loss": "huber", "huber_delta": 1.0, "epochs": 120, "ensemble": 5},
}
DEFAULT_VARIANT = "robust"
DEFAULT_BATCH = 16
DEFAULT_FOLDS = 4
TEST_FRACTION = 0.2
MAX_CATEGORIES = 100  # a text column with more distinct values is an identifier, not a category
SKEW_LOG1P = 1.0  # numeric columns at least this skewed (and never negative) are log(1 + x) before scaling
ANSWER_FIELD_RE = re.compile(r"[^a-z0-9_]+")
RESERVED_FIELDS = ("model", "version", "unit")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="CSV, JSONL or Parquet: one row per example, one column per feature and the target")
    parser.add_argument("--target", help="the numeric column to predict (required)")
    parser.add_argument("--features", nargs="+", help="the feature columns (default: every column but the target and `split`)")
    parser.add_argument(
        "--test-data", help="a separate test file (same columns); default: the rows whose `split` column says test, else a seeded 20%%"
    )
    parser.add_argument("--unit", default="", help="the target's unit, shown with every answer")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default=DEFAULT_VARIANT)
    parser.add_argument("--epochs", type=int, help="default: the variant's")
    parser.add_argument("--ensemble", type=int, help="networks averaged into one model (default: the variant's)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--folds", type=int, default=DEFAULT_FOLDS, help="K for K-fold validation (default: %(default)s)")


# ---------------------------------------------------------------- data


@dataclass
class Table:
    columns: tuple[str, ...]  # the features, in the file's order
    categories: dict[str, tuple[str, ...]]  # the categorical ones and their categories
    x_train: np.ndarray  # rows in `columns` order; a categorical cell holds its category's index
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    target: str
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def numeric(self) -> tuple[str, ...]:
        return tuple(c for c in self.columns if c not in self.categories)


def _columns(frame: Any, args: argparse.Namespace, path: Path) -> tuple[str, list[str]]:
    """(target, features) as the file spells them; DataError for an unknown or missing one."""
    names = [str(c) for c in frame.columns]
    if not args.target:
        raise DataError(f"name the column to predict with --target; {path} has columns {names}")
    target = find_column(names, args.target, "--target", path)
    if args.features:
        features = [find_column(names, f, "--features", path) for f in args.features]
    else:
        features = [c for c in names if c != target and c.lower() != "split"]
    if target in features:
        raise DataError(f"{target!r} is the target; it cannot also be a feature")
    if not features:
        raise DataError(f"{path}: no feature columns besides the target {target!r}")
    return target, features


def _check(frame: Any, target: str, features: list[str], path: Path) -> None:
    import pandas as pd

    if frame.empty:
        raise DataError(f"{path}: no rows")
    if not pd.api.types.is_numeric_dtype(frame[target]) or pd.api.types.is_bool_dtype(frame[target]):
        sample = next((v for v in frame[target] if not isinstance(v, int | float)), None)
        raise DataError(f"{path}: the target {target!r} must be numeric (a regression), but it holds {sample!r}")
    for column in [target, *features]:
        missing = int(frame[column].isna().sum())
        if missing:
            raise DataError(f"{path}: column {column!r} has {missing} empty cell(s); fill or drop them")
    if not np.isfinite(frame[target].to_numpy(np.float64)).all():
        raise DataError(f"{path}: the target {target!r} has infinite values")


def _categories(frame: Any, features: list[str], path: Path) -> dict[str, tuple[str, ...]]:
    """The text (non-numeric) columns and their categories, sorted."""
    import pandas as pd

    categories = {}
    for column in features:
        series = frame[column]
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            continue
        values = sorted({text for text in map(category_text, series) if text is not None})
        if len(values) > MAX_CATEGORIES:
            raise DataError(
                f"{path}: column {column!r} has {len(values)} distinct values; one-hot takes at most {MAX_CATEGORIES} (leave it out with --features)"
            )
        categories[column] = tuple(values)
    return categories


def _rows(frame: Any, columns: list[str], categories: dict[str, tuple[str, ...]]) -> np.ndarray:
    """The feature cells as floats in `columns` order; a categorical cell as its category's index."""
    out = np.empty((len(frame), len(columns)))
    for j, column in enumerate(columns):
        if column in categories:
            out[:, j] = [categories[column].index(category_text(v) or "") for v in frame[column]]
        else:
            out[:, j] = frame[column].to_numpy(np.float64)
    if not np.isfinite(out).all():
        raise DataError("a feature has infinite values")
    return out


def load_table(args: argparse.Namespace) -> Table:
    """The user's table split into train and test: --test-data, its split column, or a seeded random 20%."""
    import pandas as pd

    path = Path(args.data)
    frame = read_frame(path)
    target, features = _columns(frame, args, path)
    records, rule = [file_record(path)], f"seeded random split, test fraction {TEST_FRACTION}, seed {args.seed}"
    test_rows = None
    if args.test_data:
        test = read_frame(Path(args.test_data))
        test_columns, missing = [str(c) for c in test.columns], [c for c in [target, *features] if c not in test.columns]
        if missing:
            raise DataError(f"{args.test_data}: no columns {missing}; columns are {test_columns}")
        records.append(file_record(Path(args.test_data)))
        test_rows, rule = len(test), "separate --test-data file"
        frame = pd.concat([frame, test[[target, *features]]], ignore_index=True)
    _check(frame, target, features, path)
    categories = _categories(frame, features, path)
    x, y = _rows(frame, features, categories), frame[target].to_numpy(np.float64)
    split = next((c for c in frame.columns if str(c).lower() == "split" and c not in features), None)
    if test_rows is not None:
        train_idx, test_idx = np.arange(len(x) - test_rows), np.arange(len(x) - test_rows, len(x))
    elif split is not None:
        kinds = frame[split].astype(str).str.lower().to_numpy()
        train_idx, test_idx, rule = np.flatnonzero(kinds == "train"), np.flatnonzero(kinds == "test"), "the table's split column"
    else:
        train_idx, test_idx = (np.sort(part) for part in split_indices(len(x), TEST_FRACTION, args.seed))
    if len(train_idx) < 4 or not len(test_idx):
        raise DataError(f"{path}: {len(train_idx)} training and {len(test_idx)} test rows; too few to train and test a regressor")
    digest = fingerprint([(str(i), f"{y[i]!r}\0{x[i].tobytes().hex()}") for i in np.concatenate([train_idx, test_idx])])
    source = {"files": records, "split": rule, "samples": {"train": len(train_idx), "test": len(test_idx)}, "fingerprint": digest}
    return Table(tuple(features), categories, x[train_idx], y[train_idx], x[test_idx], y[test_idx], target, source)


# ---------------------------------------------------------------- the model (the seed's regression network)


def build_network(n_features: int, config: dict[str, Any], name: str) -> keras.Model:
    """Dense(width, relu) x depth -> Dense(1); the seed's network is width 64, depth 2, no regularisation."""
    regularizer = keras.regularizers.L2(config["l2"]) if config["l2"] else None
    layers: list[keras.layers.Layer] = [keras.Input((n_features,), name="features")]
    for _ in range(config["depth"]):
        layers.append(keras.layers.Dense(config["width"], activation="relu", kernel_regularizer=regularizer))
        if config["dropout"]:
            layers.append(keras.layers.Dropout(config["dropout"]))
    layers.append(keras.layers.Dense(1))
    model = keras.Sequential(layers, name=name)
    model.compile(optimizer="rmsprop", loss=loss(config), metrics=["mae"])
    return model


def loss(config: dict[str, Any]) -> Any:
    return keras.losses.Huber(config["huber_delta"]) if config["loss"] == "huber" else config["loss"]


def fit_ensemble(
    x: np.ndarray,
    y: np.ndarray,
    config: dict[str, Any],
    batch_size: int,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    verbose: int = 0,
    name: str = "regressor",
    output: str = "value",
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train `ensemble` networks; return one model averaging them (its output layer named `output`), and their mean history.

    The members train side by side in one Keras model, each on its own loss (the loss is
    averaged over the members' outputs, and RMSprop's step does not depend on that
    scale): one fit instead of one per member, 4-5x faster here on 2 cores.
    """
    if config["ensemble"] == 1:
        network = build_network(x.shape[1], config, name)
        history = network.fit(x, y, validation_data=validation, epochs=config["epochs"], batch_size=batch_size, verbose=verbose).history
        return network, {k: [float(v) for v in values] for k, values in history.items()}
    inputs = keras.Input((x.shape[1],), name="features")
    members = [build_network(x.shape[1], config, f"member_{i}") for i in range(config["ensemble"])]
    side_by_side = keras.Model(inputs, keras.layers.Concatenate(name="members")([m(inputs) for m in members]), name=f"{name}_train")
    side_by_side.compile(optimizer="rmsprop", loss=loss(config), metrics=["mae"])  # MAE averaged over members, as each member's history was
    targets = np.repeat(y[:, None], config["ensemble"], axis=1)
    validation_data = None if validation is None else (validation[0], np.repeat(validation[1][:, None], config["ensemble"], axis=1))
    history = side_by_side.fit(
        x, targets, validation_data=validation_data, epochs=config["epochs"], batch_size=batch_size, verbose=verbose
    ).history
    averaged = keras.layers.Average(name=output)([m(inputs) for m in members])
    return keras.Model(inputs, averaged, name=name), {k: [float(v) for v in values] for k, values in history.items()}


def k_fold(
    x: np.ndarray, y: np.ndarray, folds: int, config: dict[str, Any], batch_size: int
) -> tuple[list[dict[str, list[float]]], list[float]]:
    """The seed's K-fold loop: each fold validates on one slice and trains on the rest."""
    fold_size = len(x) // folds
    histories, fold_mae = [], []
    for fold in range(folds):
        val = slice(fold * fold_size, (fold + 1) * fold_size)
        train_x = np.concatenate([x[: val.start], x[val.stop :]])
        train_y = np.concatenate([y[: val.start], y[val.stop :]])
        model, history = fit_ensemble(train_x, train_y, config, batch_size, validation=(x[val], y[val]))
        histories.append(history)
        fold_mae.append(float(np.abs(model.predict(x[val], verbose=0).ravel() - y[val]).mean()))
        log(
            "k-fold",
            f"fold {fold + 1}/{folds}: validation MAE {fold_mae[-1]:.3f} ({config['ensemble']} network(s), {config['epochs']} epochs)",
        )
    return histories, fold_mae


def evaluate(model: keras.Model, x_test: np.ndarray, y_test: np.ndarray, y_train: np.ndarray) -> dict[str, Any]:
    """Test MAE and RMSE, and the MAE of always predicting the training mean (the baseline)."""
    errors = model.predict(x_test, verbose=0).ravel() - y_test
    baseline = float(np.abs(y_test - y_train.mean()).mean())
    return {
        "mae": float(np.abs(errors).mean()),
        "rmse": float(np.sqrt((errors**2).mean())),
        "samples": len(errors),
        "baseline_mae_train_mean": baseline,
    }


def k_fold_metrics(folds: int, fold_mae: list[float], histories: list[dict[str, list[float]]]) -> dict[str, Any]:
    mean_curve = np.mean([h["val_mae"] for h in histories], axis=0)
    return {
        "k": folds,
        "val_mae_per_fold": fold_mae,
        "val_mae_mean": float(np.mean(fold_mae)),
        "best_epoch_mean_curve": int(np.argmin(mean_curve)) + 1,
        "best_val_mae_mean_curve": float(mean_curve.min()),
    }


def layer(config: dict[str, Any]) -> str:
    extras = (f", L2({config['l2']})" if config["l2"] else "") + (f", Dropout({config['dropout']})" if config["dropout"] else "")
    return f"Dense({config['width']}, relu){extras}"


# ---------------------------------------------------------------- the recipe


def answer_field(target: str) -> str:
    """What answers call the prediction: the target's name in lower case (letters, digits, _), else "value"."""
    field = ANSWER_FIELD_RE.sub("_", target.lower()).strip("_")[:64]
    return field if field and field[0].isalpha() and field not in RESERVED_FIELDS else "value"


def skewed(x: np.ndarray, names: tuple[str, ...]) -> tuple[str, ...]:
    """Numeric columns never negative and right-skewed (Boston's CRIM, LSTAT): log(1 + x) before scaling."""
    chosen = []
    for j, name in enumerate(names):
        column = x[:, j]
        std = column.std()
        if column.min() >= 0 and std > 0 and float(((column - column.mean()) ** 3).mean() / std**3) >= SKEW_LOG1P:
            chosen.append(name)
    return tuple(chosen)


def encoder_for(table: Table) -> TableEncoder:
    numeric = [table.columns.index(c) for c in table.numeric]
    x = table.x_train[:, numeric]
    scaler = StandardScaler.fit(x, table.numeric, log1p=skewed(x, table.numeric))
    return TableEncoder(table.columns, scaler, table.categories)


def unscaled(model: keras.Model, mean: float, std: float, name: str, output: str) -> keras.Model:
    """The trained model (on standardised targets) with its output scaled back: value = std * output + mean, in the graph."""
    inputs = keras.Input(model.input_shape[1:], name="features")
    return keras.Model(inputs, keras.layers.Rescaling(std, mean, name=output)(model(inputs)), name=name)


def raw_rows(table: Table, rows: np.ndarray) -> list[list[Any]]:
    """Rows as the service takes them (a category by its name), for drift's reference profile."""
    return [[table.categories[c][int(v)] if c in table.categories else float(v) for c, v in zip(table.columns, row)] for row in rows]


def profile_data(args: argparse.Namespace, preprocessing: dict[str, Any]) -> tuple[list[Any], list[Any], dict[str, Any]]:
    """Training rows, test rows and the data's record, for a reference profile (`python -m training profile`)."""
    table = load_table(args)
    log("data", f"{len(table.x_train)} training rows to profile, {len(table.x_test)} test rows to answer")
    return raw_rows(table, table.x_train), list(table.x_test), table.source


def _example(table: Table) -> dict[str, Any]:
    """A real row to start from (the playground's form): the first test row, with its true target."""
    values = {c: table.categories[c][int(v)] if c in table.categories else float(v) for c, v in zip(table.columns, table.x_test[0])}
    return {"values": values, "target": float(table.y_test[0]), "source": "the first row of the test set", "real": True}


def _records(args: argparse.Namespace, config: dict[str, Any], table: Table, encoder: TableEncoder) -> dict[str, Any]:
    """The architecture and training blocks of metadata.json."""
    return {
        "architecture": {
            "variant": args.variant,
            "layers": [layer(config)] * config["depth"] + ["Dense(1)", "Rescaling(target std, target mean)"],
            "width": config["width"],
            "depth": config["depth"],
            "ensemble": config["ensemble"],
            "features": list(table.columns),
            "numeric_features": list(table.numeric),
            "categorical_features": {c: len(v) for c, v in table.categories.items()},
            "log1p_features": list(encoder.log1p),
            "input_width": encoder.width,
        },
        "training": {
            "optimizer": "rmsprop",
            "loss": config["loss"],
            "huber_delta": config.get("huber_delta"),
            "metric": "mae",
            "epochs": config["epochs"],
            "batch_size": args.batch_size,
            "seed": args.seed,
            "target_scaling": "standardised with the training rows' mean and std; the graph scales its output back",
            "final_fit": "all training rows after K-fold validation",
            "history": "mean over K folds, MAE in the target's unit",
        },
    }


def _kfold(
    x: np.ndarray, y_scaled: np.ndarray, std: float, args: argparse.Namespace, config: dict[str, Any]
) -> tuple[list[dict[str, list[float]]], list[float]]:
    """K-fold on standardised targets, MAE reported in the target's unit."""
    if not 2 <= args.folds <= len(x) // 2:
        raise DataError(f"--folds {args.folds}: need 2 to {len(x) // 2} folds for {len(x)} training rows")
    histories, fold_mae = k_fold(x, y_scaled, args.folds, config, args.batch_size)
    histories = [{k: [v * std for v in values] if "mae" in k else values for k, values in h.items()} for h in histories]
    return histories, [m * std for m in fold_mae]


def train(args: argparse.Namespace) -> TrainingResult:
    config = dict(VARIANTS[args.variant]) | {k: getattr(args, k) for k in ("epochs", "ensemble") if getattr(args, k) is not None}
    table = load_table(args)
    log("data", f"{len(table.x_train)} train / {len(table.x_test)} test rows; target {table.target}; "
        f"{len(table.numeric)} numeric, {len(table.categories)} categorical features")  # fmt: skip
    keras.utils.set_random_seed(args.seed)
    encoder = encoder_for(table)
    x_train, x_test = encoder.transform(table.x_train), encoder.transform(table.x_test)
    mean, std = float(table.y_train.mean()), float(table.y_train.std() or 1.0)
    y_scaled = (table.y_train - mean) / std
    log("k-fold", f"{args.folds}-fold validation of variant {args.variant}: {config}")
    histories, fold_mae = _kfold(x_train, y_scaled, std, args, config)
    log("train", f"final model on all {len(x_train)} training rows: {config['ensemble']} network(s), {config['epochs']} epochs")
    name, output = args.name.replace("-", "_"), answer_field(table.target)
    trained, _ = fit_ensemble(
        x_train, y_scaled, config, args.batch_size, verbose=fit_verbosity() if config["epochs"] <= 20 else 0, name=f"{name}_scaled"
    )
    model = unscaled(trained, mean, std, name, output)
    test_metrics = evaluate(model, x_test, table.y_test, table.y_train)
    print(f"K-fold validation MAE {np.mean(fold_mae):.4g}; test MAE {test_metrics['mae']:.4g}, RMSE {test_metrics['rmse']:.4g}; "
          f"predicting the training mean gives MAE {test_metrics['baseline_mae_train_mean']:.4g}")  # fmt: skip
    history = {key: [float(v) for v in np.mean([h[key] for h in histories], axis=0)] for key in histories[0]}
    return TrainingResult(
        name=args.name,
        task="regression",
        model=model,
        input_spec=TensorSpec("features", "float32", (None, encoder.width)),
        output_name=output,
        labels=[],
        preprocessing={
            "kind": "tabular",
            "scaler_file": SCALER_FILE,
            "features": list(table.columns),
            "categorical": {c: list(v) for c, v in table.categories.items()},
            "log1p_features": list(encoder.log1p),
            "target": table.target,
            "unit": args.unit,
            "answer_field": output,
        },
        assets={SCALER_FILE: encoder.to_json()},
        metrics={"test": test_metrics, "k_fold": k_fold_metrics(args.folds, fold_mae, histories)},
        history=history,
        history_metric="mae",
        parity_inputs=parity_inputs(x_test, x_train, most=len(x_test)).astype(np.float32),
        data={"dataset": Path(args.data).name, **table.source, "synthetic": False, "example": _example(table)},
        **_records(args, config, table, encoder),
        test_items=list(table.x_test),
        test_targets=[float(y) for y in table.y_test],
        profile_inputs=raw_rows(table, table.x_train),
        extra_plots={
            "kfold_val_mae.png": lambda path: plot_kfold(histories, "mae", path, f"{args.name}: {args.folds}-fold validation MAE")
        },
    )

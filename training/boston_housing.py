"""Boston housing: median house price (in $1000s) from the 13 named features.

Seed (the regression example of the notes): per-feature normalisation with the
training set's mean and std, Dense(64, relu) -> Dense(64, relu) -> Dense(1), MSE
loss, MAE metric, K-fold validation (k=4) because 404 training rows are too few
for a single hold-out split; then the final model is fitted on all training rows
and evaluated once on the test rows.

The scaler lives in scaler.json and is applied by service/preprocessing.py, the
same code the service runs.
"""

from __future__ import annotations

import argparse

import numpy as np

import keras
from service.preprocessing import SCALER_FILE, StandardScaler
from training.datasets import load_housing
from training.export import TensorSpec
from training.plots import plot_kfold
from training.progress import fit_verbosity, log
from training.publish import TrainingResult

NAME = "boston_housing"
DEFAULT_EPOCHS = 80  # where the seed's K-fold validation MAE stops improving
DEFAULT_BATCH = 16
DEFAULT_FOLDS = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="Keras-layout boston_housing.npz or a .csv with the 13 features and MEDV (default: Keras download)")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--folds", type=int, default=DEFAULT_FOLDS, help="K for K-fold validation (default: %(default)s)")


def build_model(n_features: int) -> keras.Model:
    model = keras.Sequential(
        [
            keras.Input((n_features,), name="features"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(1),
        ],
        name=NAME,
    )
    model.compile(optimizer="rmsprop", loss="mse", metrics=["mae"])
    return model


def k_fold(x: np.ndarray, y: np.ndarray, folds: int, epochs: int, batch_size: int) -> list[dict[str, list[float]]]:
    """The seed's K-fold loop: each fold validates on one slice and trains on the rest."""
    fold_size = len(x) // folds
    histories = []
    for fold in range(folds):
        val = slice(fold * fold_size, (fold + 1) * fold_size)
        train_x = np.concatenate([x[: val.start], x[val.stop :]])
        train_y = np.concatenate([y[: val.start], y[val.stop :]])
        model = build_model(x.shape[1])
        history = model.fit(train_x, train_y, validation_data=(x[val], y[val]), epochs=epochs, batch_size=batch_size, verbose=0).history
        histories.append({k: [float(v) for v in values] for k, values in history.items()})
        log("k-fold", f"fold {fold + 1}/{folds}: validation MAE {history['val_mae'][-1]:.3f} after {epochs} epochs")
    return histories


def train(args: argparse.Namespace) -> TrainingResult:
    keras.utils.set_random_seed(args.seed)
    data = load_housing(args.data)
    log("data", f"{len(data.x_train)} train / {len(data.x_test)} test rows from {args.data or 'keras.datasets.boston_housing'}")
    scaler = StandardScaler.fit(data.x_train, data.feature_names)
    x_train, x_test = scaler.transform(data.x_train), scaler.transform(data.x_test)

    log("k-fold", f"{args.folds}-fold validation, {args.epochs} epochs each")
    histories = k_fold(x_train, data.y_train, args.folds, args.epochs, args.batch_size)
    fold_mae = [h["val_mae"][-1] for h in histories]
    mean_curve = np.mean([h["val_mae"] for h in histories], axis=0)

    log("train", f"final model on all {len(x_train)} training rows, {args.epochs} epochs")
    model = build_model(x_train.shape[1])
    model.fit(x_train, data.y_train, epochs=args.epochs, batch_size=args.batch_size, verbose=fit_verbosity() if args.epochs <= 20 else 0)
    predictions = model.predict(x_test, verbose=0).ravel()
    errors = predictions - data.y_test
    mae = float(np.abs(errors).mean())
    baseline = float(np.abs(data.y_test - data.y_train.mean()).mean())
    print(f"test MAE {mae:.3f} ($1000s), RMSE {float(np.sqrt((errors**2).mean())):.3f}; predicting the training mean gives MAE {baseline:.3f}")

    # The combined curve: per-epoch mean over folds (training and validation) is what the seed plots.
    history = {key: [float(v) for v in np.mean([h[key] for h in histories], axis=0)] for key in histories[0]}
    parity_inputs = np.concatenate([x_test, x_train])[: max(100, len(x_test))]
    return TrainingResult(
        name=NAME,
        task="regression",
        model=model,
        input_spec=TensorSpec("features", "float32", (None, len(data.feature_names))),
        output_name="price",
        labels=[],
        preprocessing={"kind": "tabular", "scaler_file": SCALER_FILE, "features": list(data.feature_names), "target": "MEDV", "unit": "$1000s"},
        assets={SCALER_FILE: scaler.to_json()},
        metrics={
            "test": {"mae": mae, "rmse": float(np.sqrt((errors**2).mean())), "samples": int(len(errors)), "baseline_mae_train_mean": baseline},
            "k_fold": {"k": args.folds, "val_mae_per_fold": fold_mae, "val_mae_mean": float(np.mean(fold_mae)),
                       "best_epoch_mean_curve": int(np.argmin(mean_curve)) + 1, "best_val_mae_mean_curve": float(mean_curve.min())},
        },
        history=history,
        history_metric="mae",
        parity_inputs=parity_inputs.astype(np.float32),
        data={"dataset": "Boston housing (Harrison & Rubinfeld)", **data.source, "synthetic": False},
        architecture={"layers": ["Dense(64, relu)", "Dense(64, relu)", "Dense(1)"], "features": list(data.feature_names)},
        training={"optimizer": "rmsprop", "loss": "mse", "metric": "mae", "epochs": args.epochs, "batch_size": args.batch_size,
                  "seed": args.seed, "final_fit": "all training rows after K-fold validation", "history": "mean over K folds"},
        extra_plots={"kfold_val_mae.png": lambda path: plot_kfold(histories, "mae", path, f"{NAME}: {args.folds}-fold validation MAE")},
    )

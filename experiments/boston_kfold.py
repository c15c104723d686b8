"""Boston housing variants compared by K-fold validation MAE on the 404 training rows only.

    nice -n 19 python -m experiments.boston_kfold [GROUP]

Each variant is scored by the trainer's 4-fold split (contiguous folds, as
training/boston_housing.k_fold does) and, to see past the noise of one split, by 4-fold
over 2 seeded reshuffles (8 more fits). The ensemble members are trained side by side in one
Keras model, each on its own loss, which is what training/boston_housing.py now does.
The test rows are never read.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import keras
import numpy as np

from service.core.preprocessing import StandardScaler
from training.boston_housing import SKEWED_FEATURES, VARIANTS, fit_ensemble
from training.datasets import BOSTON_FEATURES, load_housing

BASE = dict(VARIANTS["robust"])
DATA = "../shared/data/boston_housing.npz"


def folds(n: int, k: int, seed: int | None) -> list[np.ndarray]:
    order = np.arange(n) if seed is None else np.random.RandomState(seed).permutation(n)
    size = n // k
    return [order[i * size : (i + 1) * size] for i in range(k)]


def score(x_raw: np.ndarray, y: np.ndarray, config: dict[str, Any], repeats: int = 2) -> tuple[float, float, float]:
    """(trainer's 4-fold MAE, mean over 2 shuffled 4-fold runs, their std)."""
    results = []
    for seed in [None, *range(repeats)]:  # None: the trainer's contiguous folds
        errors = []
        for val in folds(len(y), 4, seed):
            train = np.setdiff1d(np.arange(len(y)), val)
            scaler = StandardScaler.fit(x_raw[train], BOSTON_FEATURES, log1p=config["log1p"])
            keras.utils.set_random_seed(0)
            model, _ = fit_ensemble(scaler.transform(x_raw[train]), y[train], config, config.get("batch_size", 16))
            errors.append(np.abs(model.predict(scaler.transform(x_raw[val]), verbose=0).ravel() - y[val]))
        results.append(float(np.concatenate(errors).mean()))
    return results[0], float(np.mean(results[1:])), float(np.std(results[1:]))


GROUPS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "base": [
        ("seed (mse, 80 epochs, 1 net, no log)", dict(VARIANTS["seed"])),
        ("robust (v1: huber, log1p, 120 epochs, 5 nets)", BASE),
        ("robust, 10 nets", BASE | {"ensemble": 10}),
        ("robust, 200 epochs", BASE | {"epochs": 200}),
        ("robust, 80 epochs", BASE | {"epochs": 80}),
    ],
    "regularise": [
        ("robust + L2 1e-3, 200 epochs", BASE | {"l2": 1e-3, "epochs": 200}),
        ("robust + L2 1e-2, 200 epochs", BASE | {"l2": 1e-2, "epochs": 200}),
        ("robust + dropout 0.1, 200 epochs", BASE | {"dropout": 0.1, "epochs": 200}),
        ("robust, width 128", BASE | {"width": 128}),
        ("robust, width 32", BASE | {"width": 32}),
        ("robust, depth 3", BASE | {"depth": 3}),
    ],
    "loss": [
        ("robust, huber delta 2", BASE | {"huber_delta": 2.0}),
        ("robust, huber delta 0.5", BASE | {"huber_delta": 0.5}),
        ("robust, mae loss", BASE | {"loss": "mae"}),
        ("robust, batch 8", BASE | {"batch_size": 8}),
        ("robust, batch 32, 200 epochs", BASE | {"batch_size": 32, "epochs": 200}),
        ("robust, also log1p(NOX, AGE, PTRATIO)", BASE | {"log1p": (*SKEWED_FEATURES, "NOX", "AGE", "PTRATIO")}),
    ],
    "longer": [  # round 3 (models-tt branch): the 200-epoch robust net, varied where it was cheap to
        ("robust, 200 epochs, width 128", BASE | {"epochs": 200, "width": 128}),
        ("robust, 200 epochs, dropout 0.1", BASE | {"epochs": 200, "dropout": 0.1}),
        ("robust, 300 epochs", BASE | {"epochs": 300}),
    ],
    "longer_loss": [
        ("robust, 200 epochs, huber delta 2", BASE | {"epochs": 200, "huber_delta": 2.0}),
        ("robust, 200 epochs, 10 nets", BASE | {"epochs": 200, "ensemble": 10}),
        ("robust, 200 epochs, batch 32", BASE | {"epochs": 200, "batch_size": 32}),
    ],
    "longest": [("robust, 400 epochs", BASE | {"epochs": 400})],
    "longest_wide": [("robust, 300 epochs, 10 nets", BASE | {"epochs": 300, "ensemble": 10})],
}


def main() -> None:
    data = load_housing(DATA)
    group = sys.argv[1] if len(sys.argv) > 1 else "base"
    print("| variant | 4-fold MAE (trainer's split) | 2x shuffled 4-fold MAE | std | s |\n|---|---|---|---|---|")
    for name, config in GROUPS[group]:
        started = time.monotonic()
        trainer, repeated, std = score(data.x_train, data.y_train, config)
        print(f"| {name} | {trainer:.3f} | {repeated:.3f} | {std:.3f} | {time.monotonic() - started:.0f} |", flush=True)


if __name__ == "__main__":
    main()

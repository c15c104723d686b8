"""Training curves and confusion matrices as PNG files, drawn as the seeds draw them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np


def plot_history(
    history: Mapping[str, Sequence[float]],
    metric: str,
    path: Path,
    title: str,
    phase_boundaries: Sequence[int] = (),
) -> Path:
    """Loss and `metric` per epoch, training as dots and validation as a line (the seeds' 'bo' / 'b')."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key in zip(axes, ("loss", metric)):
        values = history.get(key, [])
        epochs = range(1, len(values) + 1)
        ax.plot(epochs, values, "bo", label=f"Training {key}")
        if f"val_{key}" in history:
            ax.plot(range(1, len(history[f"val_{key}"]) + 1), history[f"val_{key}"], "b", label=f"Validation {key}")
        for boundary in phase_boundaries:
            ax.axvline(boundary + 0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_title(f"Training and validation {key}")
        ax.set_xlabel("Epochs")
        ax.set_ylabel(key)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion_matrix(matrix: np.ndarray, labels: Sequence[str], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > threshold else "black")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_kfold(fold_histories: Sequence[Mapping[str, Sequence[float]]], metric: str, path: Path, title: str) -> Path:
    """Mean validation metric per epoch across folds (the seed's K-fold curve)."""
    key = f"val_{metric}"
    curves = np.array([h[key] for h in fold_histories])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(1, curves.shape[1] + 1), curves.mean(axis=0), "b")
    ax.fill_between(range(1, curves.shape[1] + 1), curves.min(axis=0), curves.max(axis=0), alpha=0.2)
    ax.set_xlabel("Epochs")
    ax.set_ylabel(f"Validation {metric.upper()}")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_drift(features: Sequence[Mapping], path: Path, title: str, columns: int = 3) -> Path:
    """Reference and live histograms of each feature (drift reports: `features` as service/core/drift.compare gives them)."""
    rows = max(1, -(-len(features) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.4 * rows), squeeze=False)
    for ax, feature in zip(axes.flat, features):
        live = np.asarray(feature["live"], dtype=float)
        positions = np.arange(len(feature["reference"]))
        ax.bar(positions - 0.2, feature["reference"], width=0.4, color="tab:blue", label="reference")
        ax.bar(
            positions + 0.2, live / max(live.sum(), 1.0), width=0.4, color="tab:red" if feature["drifted"] else "tab:orange", label="live"
        )
        ax.set_xticks(positions, feature["bins"], rotation=45, ha="right", fontsize=7)
        score = "no score yet" if feature["score"] is None else f"JS {feature['score']:.3f}, PSI {feature['psi']:.2f}"
        ax.set_title(f"{feature['name']} ({feature['role']}): {score}" + (" DRIFTED" if feature["drifted"] else ""), fontsize=9)
        ax.set_ylabel("share of items")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(features) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

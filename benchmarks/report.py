"""What the benchmarks write under benchmarks/results/: Markdown tables and PNG figures, in one place."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def figure(path: Path, rows: int = 1, columns: int = 1, size: tuple[float, float] | None = None) -> Iterator[tuple[Any, Any]]:
    """(figure, axes as a rows x columns array); on exit every axis gets a grid and, if it has labels, a legend, and the PNG is written."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, columns, figsize=size or (5.5 * columns, 4 * rows), squeeze=False)
    try:
        yield fig, axes
        for ax in axes.flat:
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def bars(ax: Any, labels: list[str], values: list[float], colors: list[str], title: str, xlabel: str) -> None:
    """Horizontal bars, top to bottom in the order given, each with its value written at its end."""
    drawn = ax.barh(labels, values, color=colors)
    ax.bar_label(drawn, labels=[f"{v:,.0f}" for v in values], padding=3, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.invert_yaxis()


def save_markdown(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")

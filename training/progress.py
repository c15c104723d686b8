"""Progress output: Keras progress bars on a terminal, one line per epoch in logs."""

from __future__ import annotations

import sys
import time

_START = time.monotonic()


def fit_verbosity() -> int:
    """Keras `verbose`: 1 draws a live bar (a terminal), 2 prints one line per epoch (CI, files)."""
    return 1 if sys.stdout.isatty() else 2


def log(step: str, message: str) -> None:
    print(f"[{time.monotonic() - _START:7.1f}s] [{step}] {message}", flush=True)

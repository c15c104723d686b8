"""The prediction log: sampled requests as rows of Parquet files, one folder per model (off by default).

    MODELSERVE_PREDICTION_LOG_DIR=/var/log/modelserve bentoml serve
    pandas.read_parquet("/var/log/modelserve/<model>")                     # every file of a model
    python -m service.batch <model> /var/log/modelserve/<model>/<file>.parquet -o rescored.parquet

One row per item of a sampled request: when, which model and version, the request's
latency, the input's summaries (a table's features by their own names, so batch scoring
reads a log file as it reads any table; a text's length and out-of-vocabulary share, an
image's size, brightness and saturation), the answer's label and number, and the whole
answer as JSON. Raw texts only with MODELSERVE_PREDICTION_LOG_INPUTS (column `text`).

Rows are buffered per model in the drift thread and written as a whole file when the
buffer reaches MODELSERVE_PREDICTION_LOG_FILE_MB or its first row is
MODELSERVE_PREDICTION_LOG_FILE_S old, and on a graceful stop (the service's shutdown hook): a file is written under a hidden
name and renamed into place, so a reader never sees half a file (pyarrow and pandas skip
names starting with "."). Beyond MODELSERVE_PREDICTION_LOG_KEEP_MB per model the oldest
files are deleted. File names start with the UTC time, so name order is time order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.core.errors import ConfigError
from service.core.files import replace_with

log = logging.getLogger("modelserve.prediction_log")
MB = 1024 * 1024
NUMBER_BYTES = 8  # a number's share of a row, for the size estimate
RESERVED = ("time", "model", "version", "request", "item", "latency_ms", "answer")  # columns every row has


def column(feature: str) -> str:
    """The log's column of a summary: the feature's own name (a table's columns stay readable by batch scoring), unless reserved."""
    return f"input_{feature}" if feature in RESERVED else feature


@dataclass
class Buffer:
    rows: list[dict[str, Any]] = field(default_factory=list)
    size: int = 0  # estimated bytes of the rows (numbers 8 bytes each, strings their length)
    since: float = 0.0  # monotonic time of the first row


def row_size(row: dict[str, Any]) -> int:
    return sum(len(v) if isinstance(v, str) else NUMBER_BYTES for v in row.values())


class PredictionLog:
    """Rows in, whole Parquet files out. Used from one thread (the drift thread) and at exit."""

    def __init__(self, directory: Path, file_mb: int, file_s: int, keep_mb: int) -> None:
        try:
            import pyarrow  # noqa: F401  (checked here: a missing package fails at start, not at the first flush)
        except ImportError:
            raise ConfigError("MODELSERVE_PREDICTION_LOG_DIR needs pyarrow: pip install 'modelserve[batch]'") from None
        self.directory, self.file_bytes, self.file_s, self.keep_bytes = directory, file_mb * MB, file_s, keep_mb * MB
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"MODELSERVE_PREDICTION_LOG_DIR={directory}: cannot create it ({exc.strerror or exc})") from None
        self.buffers: dict[str, Buffer] = {}
        self.sequence = 0

    def add(self, model: str, rows: list[dict[str, Any]]) -> None:
        buffer = self.buffers.setdefault(model, Buffer())
        if not buffer.rows:
            buffer.since = time.monotonic()
        buffer.rows.extend(rows)
        buffer.size += sum(row_size(row) for row in rows)
        if buffer.size >= self.file_bytes:
            self.flush(model)

    def flush_due(self) -> list[Path]:
        """Write every buffer whose first row is older than the age limit."""
        now = time.monotonic()
        return [path for model, b in list(self.buffers.items()) if b.rows and now - b.since >= self.file_s for path in [self.flush(model)]]

    def flush_all(self) -> list[Path]:
        return [self.flush(model) for model, buffer in list(self.buffers.items()) if buffer.rows]

    def flush(self, model: str) -> Path:
        """Write `model`'s buffered rows as one Parquet file, then delete the oldest files beyond the size limit."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        buffer = self.buffers.pop(model)
        folder = self.directory / model
        self.sequence += 1
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = folder / f"{stamp}-{os.getpid()}-{self.sequence:06d}.parquet"
        table = pa.Table.from_pylist(buffer.rows)
        try:
            folder.mkdir(exist_ok=True)
            replace_with(path, lambda tmp: pq.write_table(table, tmp))
        except OSError as exc:  # a full or read-only disk: say what is lost, keep serving
            log.error("prediction log: %d rows of %s NOT written to %s: %s", len(buffer.rows), model, path, exc.strerror or exc)
            return path
        self._prune(folder)
        log.debug("prediction log: %d rows of %s -> %s", len(buffer.rows), model, path)
        return path

    def _prune(self, folder: Path) -> None:
        """Delete the oldest files of `folder` while its files hold more than the limit (other workers prune the same folder)."""
        files = []
        for path in folder.glob("*.parquet"):
            with contextlib.suppress(FileNotFoundError):
                files.append((path.name, path, path.stat().st_size))
        total = sum(size for _, _, size in files)
        for _, path, size in sorted(files):
            if total <= self.keep_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            total -= size

"""Per-version series on /metrics: traffic, outcomes, where time goes, batch sizes, what the model predicts.

What a canary or shadow decision reads, and what an operator graphs. Label values are
the model's name and version, so two versions served at once show side by side.
prometheus_client is imported on first use, inside the worker: BentoML sets
PROMETHEUS_MULTIPROC_DIR there after this module is imported, and prometheus_client
picks its value storage when it is imported.

Each server keeps its values in a directory of its own (`own_metrics_directory`).
BentoML's default is one per user, ~/bentoml/prometheus_multiproc_dir, and every
server that starts empties it: a second `bentoml serve` on the host wiped the first
one's per-version series in the middle of a canary watch, which then saw no traffic.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from service.core.tasks import Answer, Task
from service.patches.bentoml_metrics_dir import use_own_directory

METRICS_DIR = "modelserve-metrics"  # under the temporary directory: <pid>-<start time> of each `bentoml serve`

TIME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
PROBABILITY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
VALUE_BUCKETS = (1, 2, 5, 10, 15, 20, 25, 30, 40, 50, 75, 100, 250, 1000)
ABS_DIFFERENCE_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)


def own_metrics_directory() -> Path | None:
    """In the process that starts the server, point BentoML at a metrics directory of this server's own.

    BentoML creates (and empties) it when it starts the workers and hands it to them in
    PROMETHEUS_MULTIPROC_DIR; it is removed when this process exits, and directories of
    servers that are gone (killed with -9) are removed by the next one that starts. In a
    worker (the directory is already chosen) this does nothing and returns None.
    """
    chosen = use_own_directory(_choose_directory)  # service/patches/bentoml_metrics_dir.py
    return Path(chosen) if chosen else None


def _choose_directory() -> str:
    root = Path(tempfile.gettempdir()) / METRICS_DIR
    me = psutil.Process()
    mine = root / f"{me.pid}-{int(me.create_time())}"
    with contextlib.suppress(OSError):
        for other in root.iterdir():
            if other != mine and not _alive(other.name):
                shutil.rmtree(other, ignore_errors=True)
    atexit.register(shutil.rmtree, mine, ignore_errors=True)
    return str(mine)


def _alive(name: str) -> bool:
    """Whether the server a directory is named after (`<pid>-<start time>`) still runs."""
    pid, _, started = name.partition("-")
    if not (pid.isascii() and pid.isdigit() and started.isascii() and started.isdigit()):
        return True  # not ours to remove
    try:
        return int(psutil.Process(int(pid)).create_time()) == int(started)
    except psutil.Error:
        return False


@dataclass
class Timing:
    """One request's time in the executor: waiting (for a thread, for a batch) and the rest (decode, infer)."""

    waited: float = 0.0


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        version = ["model", "version"]
        self.requests = Counter("modelserve_requests", "Requests that reached a model version, by outcome", [*version, "outcome"])
        self.queue = Histogram(
            "modelserve_queue_seconds", "Time a request waited for a worker thread or a batch", version, buckets=TIME_BUCKETS
        )
        self.compute = Histogram(
            "modelserve_compute_seconds", "Time a request spent decoding and in inference", version, buckets=TIME_BUCKETS
        )
        self.batch = Histogram("modelserve_batch_size", "Items per onnxruntime call", version, buckets=BATCH_BUCKETS)
        self.labels = Counter("modelserve_predicted_labels", "Items answered with each label", [*version, "label"])
        self.probability = Histogram(
            "modelserve_predicted_probability",
            "Classifiers: the probability answered (top class, or positive)",
            version,
            buckets=PROBABILITY_BUCKETS,
        )
        self.value = Histogram("modelserve_predicted_value", "Regressors: the value answered", version, buckets=VALUE_BUCKETS)
        self.shadow_items = Counter("modelserve_shadow_items", "Items a shadow candidate scored beside the served version", version)
        self.shadow_skipped = Counter(
            "modelserve_shadow_skipped", "Requests not shadowed because MAX_SHADOW_PENDING shadow scorings were already pending", version
        )
        self.shadow_disagreements = Counter(
            "modelserve_shadow_disagreements", "Shadow items whose label differs from the served version's", version
        )
        self.shadow_difference = Histogram(
            "modelserve_shadow_abs_difference",
            "Shadow items: |candidate - served| of the score or value",
            version,
            buckets=ABS_DIFFERENCE_BUCKETS,
        )

    def request(self, name: str, version: int, outcome: str, timing: Timing | None = None, elapsed: float = 0.0) -> None:
        self.requests.labels(name, str(version), outcome).inc()
        if timing is not None:
            self.queue.labels(name, str(version)).observe(timing.waited)
            self.compute.labels(name, str(version)).observe(max(0.0, elapsed - timing.waited))

    def answers(self, task: Task, name: str, version: int, answers: Sequence[Answer]) -> None:
        histogram = self.value if task.predicts_value else self.probability
        for answer in answers:
            label, score = task.observation(answer)
            if label is not None:
                self.labels.labels(name, str(version), label).inc()
            histogram.labels(name, str(version)).observe(score)

    def batch_size(self, name: str, version: int, size: int) -> None:
        self.batch.labels(name, str(version)).observe(size)

    def shadow(self, task: Task, name: str, version: int, served: Sequence[Answer], candidate: Sequence[Answer]) -> None:
        """Compare a shadow candidate's answers with the served version's, item by item."""
        disagreements = self.shadow_disagreements.labels(name, str(version))  # exported from the first item on, at 0 until one differs
        for ours, theirs in zip(served, candidate, strict=True):
            (label, score), (their_label, their_score) = task.observation(ours), task.observation(theirs)
            self.shadow_items.labels(name, str(version)).inc()
            if label != their_label:
                disagreements.inc()
            self.shadow_difference.labels(name, str(version)).observe(abs(score - their_score))


@functools.cache
def metrics() -> Metrics:
    """The worker's metrics, created once, on first use (see the module docstring)."""
    return Metrics()


class DriftMetrics:
    """Drift per model, version and feature (service/http/drift.py), and how much was sampled for it.

    Every worker computes the same scores from the windows of all workers merged (shared
    files), so the gauges keep the most recent value any live worker set ("livemostrecent"),
    not a sum. A version no longer served is set to NaN: multiprocess values cannot be removed.
    """

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge

        version, feature = ["model", "version"], ["model", "version", "feature"]
        mode = "livemostrecent"
        self.score = Gauge(
            "modelserve_drift_score",
            "Jensen-Shannon distance (base 2, 0-1) between a feature's live and reference histograms; NaN while the window fills",
            feature,
            multiprocess_mode=mode,
        )
        self.psi = Gauge(
            "modelserve_drift_psi", "Population stability index of a feature, live against reference", feature, multiprocess_mode=mode
        )
        self.window = Gauge(
            "modelserve_drift_window_items", "Items in the live window, every worker's together", version, multiprocess_mode=mode
        )
        self.available = Gauge(
            "modelserve_drift_profile_available",
            "1 when the version has a usable reference profile (profile.json), else 0",
            version,
            multiprocess_mode=mode,
        )
        self.sampled = Counter("modelserve_drift_sampled_items", "Items summarized for drift and the prediction log", version)
        self.dropped = Counter(
            "modelserve_drift_dropped_requests", "Sampled requests dropped because the drift thread was behind", ["model"]
        )
        self.logged = Counter("modelserve_prediction_log_rows", "Rows written to the prediction log's files", ["model"])


@functools.cache
def drift_metrics() -> DriftMetrics:
    """The worker's drift series, created on first use in the worker (see the module docstring)."""
    return DriftMetrics()

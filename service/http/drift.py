"""Live drift: each served version's recent inputs and answers against its reference profile, off the request path.

On the request path a sampled request (MODELSERVE_DRIFT_SAMPLE) costs one random draw
and the kind's `capture` (references to its items, an image's header size) on the event
loop, and an append to a bounded queue after the response is written. Everything else
runs in one thread per worker, every TICK_S: it summarizes the queued requests with the
kind's profiler (service/core/tasks/profiles.py), puts each item into its version's
window (the bins of the last MODELSERVE_DRIFT_WINDOW items, no raw inputs), writes the
prediction log when one is configured, and every MODELSERVE_DRIFT_INTERVAL_S compares
the windows with the version's profile.

Workers: each worker has its own window of the requests it served. At each computation a
worker writes its windows' bin counts to a small file in the directory its server's
workers share (service/core/workers.py) and adds the counts the other live workers wrote:
the score is that of every worker's window together, whichever worker computes it, so
GET /models/{name}/drift answers the same from every worker and the gauges (mode
"livemostrecent") carry one value, not one per worker.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import os
import random
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.core.config import Settings
from service.core.drift import METRIC_NAME, MISSING, FeatureProfile, Profile, compare, read_profile
from service.core.errors import RegistryError
from service.core.prediction_log import PredictionLog, column
from service.core.runtime import LoadedModel, ModelRuntime
from service.core.tasks.profiles import profiler
from service.core.workers import WorkerGroup
from service.http.metrics import drift_metrics

log = logging.getLogger("modelserve.drift")
TICK_S = 0.1  # how often the drift thread takes the queued requests
SUMMARY_CHUNK = 8  # items summarized between two chances for the event loop to take the GIL
MAX_PENDING = 512  # sampled requests waiting for the thread; beyond, requests are dropped (counted)
STALE_INTERVALS = 3  # another worker's counts older than this many intervals are left out
SHARED_PREFIX = "drift-"  # the workers' count files: drift-<pid>.json


@dataclass
class Sample:
    """One sampled request: what the kind captured on the event loop, then its answers."""

    model: LoadedModel
    captured: list[Any]
    cost: int  # the task's cost of its items (image pixels): bounds what the queue holds
    at: float  # time.time() when it arrived
    answers: list[dict[str, Any]] | None = None
    latency_s: float = 0.0
    request: str = ""


class Window:
    """The bins of the most recent items of one version: a ring of rows, one column per profiled feature."""

    def __init__(self, features: Sequence[FeatureProfile], capacity: int) -> None:
        self.features = list(features)
        self.ring = np.full((capacity, len(self.features)), MISSING, dtype=np.int16)
        self.items = 0  # rows filled (up to capacity)
        self.next = 0  # where the next row goes

    def add(self, columns: dict[str, Sequence[Any]], n: int) -> None:
        """`n` items, each feature's values in `columns` (a feature the kind did not give counts nowhere)."""
        capacity = len(self.ring)
        rows = np.full((n, len(self.features)), MISSING, dtype=np.int16)
        for i, feature in enumerate(self.features):
            if feature.name in columns:
                rows[:, i] = feature.bin_indices(columns[feature.name])
        rows = rows[-capacity:]
        positions = (self.next + np.arange(len(rows))) % capacity
        self.ring[positions] = rows
        self.next = int((self.next + len(rows)) % capacity)
        self.items = min(capacity, self.items + len(rows))

    def counts(self) -> dict[str, list[int]]:
        counts = {}
        for i, feature in enumerate(self.features):
            bins = self.ring[:, i]
            counts[feature.name] = np.bincount(bins[bins != MISSING], minlength=feature.bins).tolist()
        return counts


@dataclass
class VersionState:
    """What the monitor holds for one served version: its profile (or why there is none) and its window."""

    profile: Profile | None
    reason: str | None
    window: Window | None


def served_versions(runtime: ModelRuntime) -> list[tuple[str, LoadedModel]]:
    """(role, model) for every version this worker serves: each model's CURRENT and its candidate, if any."""
    served = []
    for name, model in runtime.served().items():
        served.append(("current", model))
        slot = runtime.candidate(name)
        if slot is not None:
            served.append(("candidate", slot.model))
    return served


class DriftMonitor:
    """One worker's drift: sampling on the request path, the rest in its own thread (see the module docstring)."""

    def __init__(self, settings: Settings, runtime: ModelRuntime, group: WorkerGroup | None, prediction_log: PredictionLog | None) -> None:
        self.settings, self.runtime, self.group, self.prediction_log = settings, runtime, group, prediction_log
        self.reports: dict[str, dict[str, Any]] = {}  # model -> the last computation's report (GET /models/{name}/drift)
        self._lock = threading.Lock()  # the queue, between the event loop and the thread
        self._work = threading.Lock()  # the thread's work, between the thread and the exit handler
        self._pending: list[Sample] = []
        self._pending_cost = 0
        self._dropped: defaultdict[str, int] = defaultdict(int)
        self._states: dict[tuple[str, int], VersionState] = {}
        self._gauged: dict[tuple[str, int], list[str]] = {}  # versions whose gauges are set, and their features
        self._requests = itertools.count(1)
        self._stop = threading.Event()

    @classmethod
    def from_settings(cls, settings: Settings, runtime: ModelRuntime, group: WorkerGroup | None) -> DriftMonitor | None:
        """A started monitor, or None when neither drift nor the prediction log is on."""
        if not settings.drift and not settings.prediction_log_dir:
            return None
        prediction_log = None
        if settings.prediction_log_dir:
            directory = Path(settings.prediction_log_dir)
            prediction_log = PredictionLog(
                directory, settings.prediction_log_file_mb, settings.prediction_log_file_s, settings.prediction_log_keep_mb
            )
        return cls(settings, runtime, group, prediction_log).start()

    def start(self) -> DriftMonitor:
        threading.Thread(target=self._run, name="drift", daemon=True).start()
        return self

    def close(self) -> None:
        """Stop the thread; what is queued is summarized and the prediction log written out (the service's shutdown hook)."""
        self._stop.set()
        with self._work:
            self._drain()
            if self.prediction_log is not None:
                self.prediction_log.flush_all()

    # ------------------------------------------------------------ on the event loop

    def sample(self, model: LoadedModel, items: Sequence[Any]) -> Sample | None:
        """A sampled request's capture (None when not sampled). Never raises: a request must not fail for drift."""
        if self.settings.drift_sample < 1.0 and random.random() >= self.settings.drift_sample:
            return None
        if len(self._pending) >= MAX_PENDING:  # read without the lock: offer() decides for the requests it lets through
            with self._lock:
                self._dropped[model.name] += 1
            return None
        try:
            return Sample(model, profiler(model.task).capture(items), model.task.cost(items), time.time())
        except Exception:
            log.exception("drift: capture of a %s request failed; not sampled", model.name)
            return None

    def offer(self, sample: Sample, answers: list[dict[str, Any]], latency_s: float) -> None:
        """Queue a sampled request with its answers (after the response is written); dropped, and counted, when the queue is full."""
        sample.answers, sample.latency_s = answers, latency_s
        with self._lock:
            if len(self._pending) >= MAX_PENDING or (self._pending and self._pending_cost + sample.cost > self.settings.max_request_pixels):
                self._dropped[sample.model.name] += 1
                return
            self._pending.append(sample)
            self._pending_cost += sample.cost

    # ------------------------------------------------------------ in the drift thread

    def _run(self) -> None:
        next_computation = 0.0
        while not self._stop.wait(TICK_S):
            try:
                with self._work:
                    self._drain()
                    if self.settings.drift and time.monotonic() >= next_computation:
                        next_computation = time.monotonic() + self.settings.drift_interval_s
                        self.compute()
                    if self.prediction_log is not None:
                        self.prediction_log.flush_due()
            except Exception:
                log.exception("drift thread: unexpected error; it goes on")

    def _drain(self) -> None:
        with self._lock:
            samples, self._pending, self._pending_cost = self._pending, [], 0
            dropped, self._dropped = self._dropped, defaultdict(int)
        for name, count in dropped.items():
            drift_metrics().dropped.labels(name).inc(count)
        by_version: dict[int, list[Sample]] = {}
        for sample in samples:
            by_version.setdefault(id(sample.model), []).append(sample)
        for group in by_version.values():
            try:
                self._take(group)
            except Exception:  # one version's bad luck (a bug in a summary) must not cost the others theirs
                model = group[0].model
                log.exception(
                    "drift: %d sampled requests of %s v%d could not be summarized; left out", len(group), model.name, model.version
                )

    def _take(self, samples: list[Sample]) -> None:
        """Summarize one version's sampled requests into its window and the prediction log."""
        model, kind = samples[0].model, profiler(samples[0].model.task)
        captured = [item for sample in samples for item in sample.captured]
        answers = [answer for sample in samples for answer in sample.answers or []]
        if len(captured) != len(answers):
            log.warning("drift: %d items but %d answers from %s v%d; skipped", len(captured), len(answers), model.name, model.version)
            return
        inputs: dict[str, list[float]] = {}
        for start in range(0, len(captured), SUMMARY_CHUNK):
            for name, values in kind.summarize(captured[start : start + SUMMARY_CHUNK], model.assets).items():
                inputs.setdefault(name, []).extend(values)
            time.sleep(0)  # hand the GIL to the event loop between chunks: a text's summary is pure Python
        outputs = kind.answer_features(answers)
        state = self._state(model)
        if state.window is not None:
            state.window.add(inputs | outputs, len(answers))
        drift_metrics().sampled.labels(model.name, str(model.version)).inc(len(answers))
        if self.prediction_log is not None:
            rows = self._rows(samples, inputs, outputs)
            self.prediction_log.add(model.name, rows)
            drift_metrics().logged.labels(model.name).inc(len(rows))

    def _state(self, model: LoadedModel) -> VersionState:
        key = (model.name, model.version)
        if key not in self._states:
            try:
                profile, reason = read_profile(model.version_ref.path, model.task.assets_kind), None
            except RegistryError as exc:
                profile, reason = None, f"v{model.version}: {exc}"
            window = Window(profile.features, self.settings.drift_window) if profile is not None and self.settings.drift else None
            self._states[key] = VersionState(profile, reason, window)
        return self._states[key]

    def _rows(self, samples: list[Sample], inputs: dict[str, list[float]], outputs: dict[str, list[Any]]) -> list[dict[str, Any]]:
        """Prediction log rows: one per item (service/core/prediction_log.py says which columns)."""
        kind, rows, i = profiler(samples[0].model.task), [], 0
        columns = {name: column(name) for name in [*inputs, *outputs]}
        for sample in samples:
            request, at = f"{os.getpid()}-{next(self._requests)}", dt.datetime.fromtimestamp(sample.at, dt.UTC)
            raw = kind.raw_inputs(sample.captured) if self.settings.prediction_log_inputs and kind.raw_column else None
            for item, answer in enumerate(sample.answers or []):
                row: dict[str, Any] = {"time": at, "model": sample.model.name, "version": sample.model.version, "request": request}
                row |= {"item": item, "latency_ms": sample.latency_s * 1000}
                row |= {columns[name]: float(values[i]) for name, values in inputs.items()}
                row |= {columns[name]: values[i] for name, values in outputs.items()}
                row["answer"] = json.dumps(answer)
                if raw is not None and kind.raw_column:
                    row[kind.raw_column] = raw[item]
                rows.append(row)
                i += 1
        return rows

    # ------------------------------------------------------------ every MODELSERVE_DRIFT_INTERVAL_S

    def compute(self) -> None:
        """Score every served version's windows (all workers' together) against its profile; set the gauges and reports."""
        served, now = served_versions(self.runtime), time.time()
        keys = {(model.name, model.version) for _, model in served}
        for key in [k for k in self._states if k not in keys]:
            del self._states[key]
        states = {(model.name, model.version): self._state(model) for _, model in served}
        own = {
            f"{name}/{version}": {"items": state.window.items, "counts": state.window.counts()}
            for (name, version), state in states.items()
            if state.window is not None
        }
        merged, workers = self._merge(own, now)
        reports: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for name in self.runtime.served():
            drift_metrics().dropped.labels(name)  # exported at 0 until a request is dropped
        for role, model in served:
            state = states[(model.name, model.version)]
            window = merged.get(f"{model.name}/{model.version}")
            reports[model.name].append(self._report(role, model, state, window, workers, now))
        self.reports = {
            name: {"model": name, "enabled": True, **self.describe(), "versions": versions} for name, versions in reports.items()
        }
        self._set_gauges(reports)

    def describe(self) -> dict[str, Any]:
        settings = self.settings
        return {
            "metric": METRIC_NAME,
            "threshold": settings.drift_threshold,
            "min_items": settings.drift_min_items,
            "window_per_worker": settings.drift_window,
            "sample": settings.drift_sample,
            "interval_s": settings.drift_interval_s,
        }

    def _merge(self, own: dict[str, dict[str, Any]], now: float) -> tuple[dict[str, dict[str, Any]], int]:
        """This worker's window counts plus those the other live workers wrote; and how many workers took part."""
        merged = {key: {"items": w["items"], "counts": {f: list(c) for f, c in w["counts"].items()}} for key, w in own.items()}
        if self.group is None:
            return merged, 1
        self.group.write_shared(SHARED_PREFIX, {"pid": os.getpid(), "at": now, "windows": own})
        workers = 1
        for peer in self.group.read_shared(SHARED_PREFIX):
            at, windows = peer.get("at"), peer.get("windows")
            if (
                not isinstance(at, float | int)
                or now - at > STALE_INTERVALS * self.settings.drift_interval_s
                or not isinstance(windows, dict)
            ):
                continue
            workers += 1
            for key, window in windows.items():
                mine = merged.get(key)
                if mine is None or not isinstance(window, dict) or not isinstance(window.get("items"), int):
                    continue  # a version this worker does not serve: the workers that serve it report it
                mine["items"] += window["items"]
                for feature, counts in (window.get("counts") or {}).items():
                    ours = mine["counts"].get(feature)
                    if ours is not None and isinstance(counts, list) and len(counts) == len(ours):
                        mine["counts"][feature] = [a + int(b) for a, b in zip(ours, counts)]
        return merged, workers

    def _report(
        self, role: str, model: LoadedModel, state: VersionState, window: dict[str, Any] | None, workers: int, now: float
    ) -> dict[str, Any]:
        base: dict[str, Any] = {"version": model.version, "role": role}
        if state.profile is None or window is None:
            return base | {"available": False, "reason": state.reason or "no live window"}
        settings, items = self.settings, window["items"]
        collecting = items < settings.drift_min_items
        features = [compare(f, window["counts"][f.name], settings.drift_threshold) for f in state.profile.features]
        if collecting:
            for feature in features:
                feature |= {"score": None, "psi": None, "drifted": False}
        features.sort(key=lambda f: -1.0 if f["score"] is None else f["score"], reverse=True)
        drifted = [f["name"] for f in features if f["drifted"]]
        profiled, served = state.profile.sources.get("answers_of"), model.model_file.path.name
        if profiled and profiled != served:  # INT8 on the CPU, fp32 on a GPU: the answers differ by that alone
            base["note"] = f"the profile holds the answers of {profiled}, this server runs {served}: predicted_* may differ by that alone"
        return base | {
            "available": True,
            "status": "collecting" if collecting else "drifted" if drifted else "ok",
            "computed_at": dt.datetime.fromtimestamp(now, dt.UTC).isoformat(timespec="seconds"),
            "window": {"items": items, "workers": workers},
            "drifted_features": drifted,
            "features": features,
            "profile": {"created_at": state.profile.created_at, "sources": state.profile.sources},
        }

    def _set_gauges(self, reports: dict[str, list[dict[str, Any]]]) -> None:
        metrics, nan, seen = drift_metrics(), float("nan"), set()
        for name, versions in reports.items():
            for report in versions:
                key, version = (name, report["version"]), str(report["version"])
                seen.add(key)
                metrics.available.labels(name, version).set(1.0 if report["available"] else 0.0)
                if not report["available"]:
                    continue
                metrics.window.labels(name, version).set(report["window"]["items"])
                for feature in report["features"]:
                    for gauge, field in ((metrics.score, "score"), (metrics.psi, "psi")):
                        gauge.labels(name, version, feature["name"]).set(nan if feature[field] is None else feature[field])
                self._gauged[key] = [feature["name"] for feature in report["features"]]
        for (name, version), features in [(k, f) for k, f in self._gauged.items() if k not in seen]:
            for feature in features:  # no longer served here: multiprocess gauges cannot be removed, NaN says "no value"
                metrics.score.labels(name, str(version), feature).set(nan)
                metrics.psi.labels(name, str(version), feature).set(nan)
            metrics.window.labels(name, str(version)).set(nan)
            metrics.available.labels(name, str(version)).set(nan)
            del self._gauged[(name, version)]


def _service() -> Any:
    try:
        return bentoml.get_current_service()
    except BentoMLException:  # still loading
        return None


async def drift_view(request: Request) -> JSONResponse:
    """GET /models/{name}/drift: each served version's drift, as of the last computation."""
    name, service = request.path_params["name"], _service()
    if service is None or not hasattr(service, "runtime"):
        return JSONResponse({"error": "models are still loading"}, status_code=503)
    if name not in service.runtime:
        return JSONResponse({"error": f"model {name} is not served here (served: {list(service.runtime.served())})"}, status_code=404)
    monitor: DriftMonitor | None = getattr(service, "monitor", None)
    if monitor is None or not monitor.settings.drift:
        return JSONResponse({"model": name, "enabled": False, "reason": "drift is off (MODELSERVE_DRIFT=0)"})
    report = monitor.reports.get(name)
    if report is None:
        note = f"not computed yet: the first computation runs within {monitor.settings.drift_interval_s} s of start"
        report = {"model": name, "enabled": True, **monitor.describe(), "versions": [], "note": note}
    return JSONResponse(report)


def drift_routes() -> list[Route]:
    return [Route("/models/{name}/drift", drift_view, methods=["GET"])]

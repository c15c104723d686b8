"""onnxruntime sessions for the registry's served models: providers, warm-up, prediction, hot swap.

Used by the HTTP service and by the batch scorer alike, so both resolve the same
version (CURRENT, or an explicit one), preprocess with the same code and turn the
same outputs into the same answers.

A model is loaded in full before it is served: checksum against metadata, session
created, the providers it really got read back from the session (a requested
provider that fails to load is silently dropped by onnxruntime), then a smoke
prediction. A reload builds the new version beside the old and swaps one
reference; a request already running keeps the object it started with.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.core.catalog import own_endpoint
from service.core.config import Settings
from service.core.cpu import cpu_report
from service.core.errors import ModelLoadError, NotFoundError, RegistryError, ReloadRefused
from service.core.int8_reference import Int8Bounds, read_reference
from service.core.int8_reference import check as check_reference
from service.core.registry import (
    CANDIDATE_FILE,
    CURRENT_FILE,
    MAX_CANDIDATE_BYTES,
    MODEL_FILE,
    MODEL_NAME_RULE,
    Candidate,
    FileLimits,
    ModelVersion,
    Registry,
    VersionFiles,
    is_model_name,
    read_limited,
    validate_metadata,
)
from service.core.sessions import GPU_PROVIDERS, SessionConfig, Sessions, cuda_device_count, open_session, resolve_providers
from service.core.tasks import Task
from service.core.tasks.friendly import friendly_api
from service.core.tasks.kinds import task_for
from service.core.workers import WorkerGroup

log = logging.getLogger("modelserve.runtime")
WATCH_TICK_S = 0.25  # how often the CURRENT watcher looks for reload requests from other workers


@dataclass(frozen=True)
class ModelFile:
    """Which file of a version the sessions run: model.onnx (fp32), or its INT8 variant checked on this CPU."""

    path: Path
    sha256: str
    precision: str  # "fp32" or "int8"
    note: str = ""  # why a version's INT8 variant is not the one running
    check: dict[str, Any] | None = None  # the INT8 variant's reference check on this CPU (ReferenceCheck.describe)
    cpu: str = ""  # for a version with an INT8 variant: the int8 kernels this CPU runs (service/core/cpu.py)

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {"file": self.path.name, "precision": self.precision}
        if self.note:
            described["note"] = self.note
        if self.check is not None:
            described["int8_check"] = self.check
        if self.cpu:
            described["cpu_int8_kernels"] = self.cpu
        return described

    def summary(self) -> str:
        """One line for logs and the batch summary: the file, and why INT8 is or is not running."""
        if self.precision == "int8" and self.check is not None:
            return (
                f"{self.path.name} (int8, checked on this CPU: same label on {self.check['label_agreement']:.0%} of "
                f"{self.check['labels_compared']} reference inputs fp32 is sure of ({self.check['samples']} in all), max |prob diff| {self.check['max_prob_diff']:.3f}; {self.cpu})"
            )
        return f"{self.path.name} ({self.precision}{f': {self.note}' if self.note else ''})"


def choose_model_file(
    version: ModelVersion, metadata: dict[str, Any], config: SessionConfig, int8: bool = True, limits: FileLimits | None = None
) -> ModelFile:
    """INT8 on the CPU provider when the version has a variant that passed its check (and `int8`); model.onnx otherwise.

    GPU providers run model.onnx (TensorRT may make its own fp16 engine from it). A variant whose
    file is missing or is not the file that was checked is not used, and the note says why.
    Where INT8 is chosen, load_model still checks it on this CPU before it serves.
    """
    fp32 = ModelFile(version.model_path, metadata["sha256"], "fp32")
    variants = metadata.get("variants")
    if not isinstance(variants, dict) or "int8" not in variants:
        return fp32
    fp32 = replace(fp32, cpu=cpu_report()["int8_kernels"])
    if config.gpu:
        return replace(fp32, note=f"INT8 variant not used: GPU providers run {MODEL_FILE}")
    if not int8:
        return replace(fp32, note="INT8 variant not used: MODELSERVE_INT8 is off")
    try:
        path = version.variant_path(metadata, "int8", limits)
    except RegistryError as exc:
        log.warning("%s; running %s", exc, MODEL_FILE)
        return replace(fp32, note=f"INT8 variant refused: {exc}")
    return replace(fp32, path=path, sha256=variants["int8"]["sha256"], precision="int8")


@dataclass
class LoadedModel:
    """One model version with its session, task and assets, ready to predict."""

    version_ref: ModelVersion
    metadata: dict[str, Any]
    sessions: Sessions
    task: Task
    assets: Any  # the task's assets for this version (vectoriser, image spec, scaler)
    requested_providers: list[str]
    model_file: ModelFile
    loaded_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    @property
    def name(self) -> str:
        return self.version_ref.name

    @property
    def version(self) -> int:
        return self.version_ref.version

    @property
    def labels(self) -> list[str]:
        return list(self.metadata["labels"])

    @property
    def providers(self) -> list[str]:
        return self.sessions.providers

    @property
    def input_names(self) -> list[str]:
        """The graph's inputs, as metadata names them (load_model checked that the graph's are the same)."""
        return [i["name"] for i in self.metadata["inputs"]]

    def feed(self, items: Sequence[Any]) -> dict[str, np.ndarray]:
        """Validated items -> this version's graph inputs by name (a dense batch, or a text model's sparse ids and weights)."""
        return self.task.feed(items, self.assets, self.input_names)

    def infer(self, feed: Mapping[str, np.ndarray], alone: bool | None = None) -> np.ndarray:
        """The graph's first output for a feed of named inputs (`feed`)."""
        return self.sessions.run(feed, alone)[0]

    def predict(self, items: Sequence[Any], alone: bool | None = None) -> list[dict[str, Any]]:
        """Validated items (texts, decoded images, feature rows) -> one answer each, naming model and version.

        `alone`: whether this is the only request in progress for the model (see Sessions.run).
        """
        if not items:
            return []
        outputs = self.infer(self.feed(items), alone)
        stamp = {"model": self.name, "version": self.version}
        return [answer | stamp for answer in self.task.answers(outputs, self.assets, self.metadata)]

    def smoke_check(self) -> None:
        """Predict on the task's smoke items, made by the real preprocessing (also warming the session); refuse nonsense."""
        try:
            items = self.task.smoke_items(self.assets)
            single = self.predict(items[:1])
            batch = self.predict(items)
        except Exception as exc:  # onnxruntime raises its own exception types; a broken asset raises anything
            raise ModelLoadError(f"{self.name} v{self.version}: smoke prediction failed: {type(exc).__name__}: {exc}") from exc
        if len(single) != 1 or len(batch) != len(items):
            raise ModelLoadError(f"{self.name} v{self.version}: smoke prediction returned {len(batch)} answers for {len(items)} inputs")
        for answer in batch:
            problem = self.task.check_answer(answer)
            if problem:
                raise ModelLoadError(f"{self.name} v{self.version}: smoke prediction is wrong ({problem}): {answer}")

    def describe(self) -> dict[str, Any]:
        meta = self.metadata
        test = {k: v for k, v in meta["metrics"].get("test", {}).items() if not isinstance(v, dict)}
        return {
            "name": self.name,
            "version": self.version,
            "task": meta["task"],
            "kind": self.task.name,
            "inputs": meta["inputs"],
            "outputs": meta["outputs"],
            "labels": meta["labels"],
            "preprocessing": meta["preprocessing"],
            "metrics": {"test": test},
            "data": {k: meta["data"].get(k) for k in ("dataset", "samples", "fingerprint", "synthetic")},
            "sha256": meta["sha256"],
            "created_at": meta["created_at"],
            "loaded_at": self.loaded_at,
            "providers": self.providers,
            "requested_providers": self.requested_providers,
            "model_file": self.model_file.describe(),
            "sessions": self.sessions.describe(),
            "plots": list(meta.get("plots", [])),  # GET /models/{name}/versions/{version}/plots/{file}
            "request": friendly_api(self.task).describe(self.assets, meta),
        }


def load_model(
    version: ModelVersion,
    providers: Sequence[str],
    intra_op_threads: int = 0,
    *,
    task: Task | None = None,
    tensorrt_fp16: bool = False,
    engine_cache: Path | None = None,
    int8: bool = True,
    int8_bounds: Int8Bounds | None = None,
    limits: FileLimits | None = None,
) -> LoadedModel:
    """Verify, open, check and warm one version as `task` (default: the one its metadata names). Raises RegistryError or ModelLoadError.

    `int8`: run the version's INT8 variant where the CPU provider runs it (choose_model_file) and it
    answers its reference set like fp32 within `int8_bounds` on this CPU (else model.onnx runs).
    `limits`: the largest model and asset files read (default FileLimits()).
    """
    limits = limits or FileLimits()
    where = f"{version.name} v{version.version}"
    metadata = version.verify(limits)  # metadata schema + sha256 of model.onnx
    task = task or task_for(metadata)
    kind = metadata["preprocessing"].get("kind")
    if kind != task.assets_kind:
        raise ModelLoadError(
            f"{where} is a {kind!r} model; {version.name} is served as {task.name}, which takes {task.assets_kind!r} models"
        )
    config = SessionConfig(tuple(providers), intra_op_threads, tensorrt_fp16, engine_cache)
    chosen = choose_model_file(version, metadata, config, int8, limits)
    try:
        sessions = Sessions(chosen.path, chosen.sha256, config)
    except Exception as exc:
        raise ModelLoadError(f"{where}: onnxruntime cannot load {chosen.path.name}: {exc}") from exc
    expected = [i["name"] for i in metadata["inputs"]]
    if expected != sessions.input_names:
        raise ModelLoadError(f"{where}: graph inputs {sessions.input_names} differ from metadata {expected}")
    problem = task.input_problem(metadata["inputs"])
    if problem:
        raise ModelLoadError(f"{where}: {problem}")
    try:
        assets = task.load_assets(VersionFiles(version.path, limits.asset_bytes), metadata)
    except Exception as exc:  # whatever a damaged asset raises (KeyError, RecursionError, ...) is a refusal, never a crash
        reason = str(exc) if isinstance(exc, RegistryError) else f"{type(exc).__name__}: {exc}"
        raise ModelLoadError(f"{where}: preprocessing assets unusable: {reason}") from exc
    model = LoadedModel(version, metadata, sessions, task, assets, list(providers), chosen)
    if chosen.precision == "int8":
        _int8_or_fp32(model, config, int8_bounds or Int8Bounds())
    model.smoke_check()
    if tensorrt_fp16 and "TensorrtExecutionProvider" in model.providers:
        model = _fp16_or_fp32(model, config)
    dropped = [p for p in providers if p not in model.providers]
    if dropped:
        log.info("%s: requested %s did not load; running on %s", where, dropped, model.providers)
    log.info("loaded %s, %s, on %s", where, model.model_file.summary(), ", ".join(model.providers))
    return model


def _int8_or_fp32(model: LoadedModel, config: SessionConfig, bounds: Int8Bounds) -> None:
    """Keep the INT8 variant only when, on this CPU, it answers its reference set as fp32 did at export; else reopen model.onnx.

    The check runs the very session that will serve, so it sees the int8 kernels this CPU
    takes (service/core/cpu.py). A version without a reference set is not checked, so not used.
    """
    version, where, chosen = model.version_ref, f"{model.name} v{model.version}", model.model_file
    result, started = None, time.perf_counter()
    try:
        inputs, expected = read_reference(*version.variant_reference(model.metadata, "int8"))
        result = check_reference(lambda batch: model.infer(model.feed(list(batch))), inputs, expected, bounds)
        result = replace(result, seconds=time.perf_counter() - started)  # reading the set (checksum, WebP) included
    except RegistryError as exc:
        reason = f"INT8 variant not used: {exc}"
    except Exception as exc:  # onnxruntime raises its own types: a reference set the variant cannot even run
        reason = f"INT8 variant not used: it fails on its reference set ({type(exc).__name__}: {exc})"
    else:
        if result.passed:
            model.model_file = replace(chosen, check=result.describe())
            return
        reason = f"INT8 variant not used: on this CPU ({chosen.cpu}) it gives {result.summary()}"
    log.warning("%s: %s; running %s", where, reason, MODEL_FILE)
    model.sessions = Sessions(version.model_path, model.metadata["sha256"], config)
    model.model_file = replace(
        chosen, path=version.model_path, sha256=model.metadata["sha256"], precision="fp32", note=reason, check=result and result.describe()
    )


FP16_TOLERANCE = 1e-2


def _fp16_or_fp32(model: LoadedModel, config: SessionConfig) -> LoadedModel:
    """Keep TensorRT fp16 only when it answers the smoke inputs like fp32 on the CPU does; else reopen in fp32."""
    feed = model.feed(model.task.smoke_items(model.assets))
    reference = open_session(model.version_ref.model_path, SessionConfig(("CPUExecutionProvider",)), model.metadata["sha256"], 0)
    difference = float(np.max(np.abs(model.infer(feed) - reference.run(None, feed)[0])))
    if difference <= FP16_TOLERANCE:
        log.info("%s v%d: TensorRT fp16 kept (max |fp16 - fp32| = %.2g on the smoke inputs)", model.name, model.version, difference)
        return model
    log.warning(
        "%s v%d: TensorRT fp16 refused (max |fp16 - fp32| = %.2g > %g); running fp32", model.name, model.version, difference, FP16_TOLERANCE
    )
    fp32 = SessionConfig(config.providers, config.intra_op_threads, False, config.engine_cache)
    model.sessions = Sessions(model.version_ref.model_path, model.metadata["sha256"], fp32)
    return model


def max_batch_size(settings: Settings, name: str, task: Task, providers: Sequence[str]) -> int:
    """MODELSERVE_MAX_BATCH_SIZE for this model, else its task's size for the provider that will run it."""
    return settings.max_batch_size.get(name) or task.batch_size(gpu=any(p in GPU_PROVIDERS for p in providers))


@dataclass(frozen=True)
class CandidateSlot:
    """A candidate version loaded beside CURRENT, and how it is served (registry.Candidate's mode and percent)."""

    model: LoadedModel
    mode: str
    percent: float

    def describe(self) -> dict[str, Any]:
        return {"version": self.model.version, "mode": self.mode, "percent": self.percent, "providers": self.model.providers}


class ModelRuntime:
    """The served models, one CURRENT version each, swappable while serving, and their candidates."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = Registry(settings.model_root)
        self.providers = resolve_providers(settings.providers)
        self._models: dict[str, LoadedModel] = {}
        self._candidates: dict[str, CandidateSlot] = {}
        self._lock = threading.Lock()  # one reload at a time
        self.refused: dict[str, dict[str, Any]] = {}
        self.refused_candidates: dict[str, dict[str, Any]] = {}
        self.on_change: Callable[[], None] | None = None  # called after every reload attempt (the worker group publishes)

    def model_names(self) -> list[str]:
        """The registry's models that have a CURRENT (or the MODELSERVE_MODELS subset of them); at start, every requested one must be there."""
        served = self.wanted()
        if self.settings.models:
            missing = [m for m in self.settings.models if m not in served]
            if missing:
                raise RegistryError(f"requested models {missing} have no CURRENT under {self.registry.root} (have {served})")
        return served

    def wanted(self) -> list[str]:
        """What the registry says to serve now: every model with a CURRENT whose name is allowed (MODELSERVE_MODELS limits them).

        A directory whose name breaks the rule is refused with that reason (GET /models lists it), never served.
        """
        wanted = []
        for name in self.registry.served_models():
            if not is_model_name(name):
                if name not in self.refused:
                    self._refuse(name, None, f"the model name {name[:100]!r} is not allowed: {MODEL_NAME_RULE}")
                continue
            if not self.settings.models or name in self.settings.models:
                wanted.append(name)
        return wanted

    def load(self, name: str, version: int | None = None) -> LoadedModel:
        ref = self.registry.current(name) if version is None else self.registry.get(name, version)
        return self._load(ref)

    def _load(self, ref: ModelVersion) -> LoadedModel:
        """load_model with this server's settings. Any failure is a RegistryError or ModelLoadError with its reason:
        one of another type (a bug, or damage nothing checks for yet) is logged with its traceback and becomes a
        ModelLoadError, so that a worker never fails to start, or a watcher to go on, because of a version's files."""
        settings = self.settings
        try:
            return load_model(
                ref,
                self.providers,
                settings.intra_op_threads,
                tensorrt_fp16=settings.tensorrt_fp16,
                engine_cache=settings.engine_cache,
                int8=settings.int8,
                int8_bounds=settings.int8_bounds(),
                limits=settings.file_limits(),
            )
        except (RegistryError, ModelLoadError):
            raise
        except Exception as exc:
            log.exception("loading %s v%d failed unexpectedly", ref.name, ref.version)
            raise ModelLoadError(f"{ref.name} v{ref.version} cannot be loaded: unexpected {type(exc).__name__}: {exc}") from exc

    def load_all(self, fallback: Mapping[str, int] | None = None) -> None:
        """Load every model's CURRENT version; where that fails, the version in `fallback` (what this server served).

        A worker that restarts (after a crash, or kill -9) while CURRENT is damaged would
        otherwise fail to start again and again, and a one-worker server would serve
        nothing. With the versions its workers last served, it starts on those and lists
        the refused CURRENT under refused_reloads. A fresh server has no fallback: it fails.
        """
        names = self.model_names()
        if not names:
            raise RegistryError(f"no model under {self.registry.root.resolve()} has a CURRENT version to serve")
        for name in names:
            try:
                self._models[name] = self.load(name)
            except Exception as exc:  # whatever the damage: a restarting worker starts on what it served
                if not fallback or name not in fallback:
                    raise
                log.warning(
                    "%s: CURRENT cannot be served (%s); starting on v%d, which this server served before", name, exc, fallback[name]
                )
                self._models[name] = self.load(name, fallback[name])
                self._refuse(name, self._models[name], str(exc))
        for name in names:  # a worker that starts during a canary serves it too
            with contextlib.suppress(ReloadRefused):
                self.reload_candidate(name)

    def get(self, name: str) -> LoadedModel:
        """The version of `name` served now; NotFoundError (404) naming the served models when there is none."""
        try:
            return self._models[name]
        except KeyError:
            raise NotFoundError(f"model {name!r} is not served here (served: {sorted(self._models)})") from None

    def sync(self) -> list[dict[str, Any]]:
        """Follow the registry's list of models: load the new ones, stop serving those whose directory is gone.

        Like Triton's polled model repository. A new model is loaded, checked and warmed
        before it is served, exactly like a reload; one that cannot be is refused with its
        reason (`refused_reloads` on GET /models), and nothing else changes.
        """
        present = set(self.registry.model_names())
        results = self.drop_missing(present)
        for name in self.wanted():
            if name not in self._models:
                with contextlib.suppress(ReloadRefused):
                    results.append(self.reload(name))
                    self.reload_candidate(name)
        return results

    def drop_missing(self, present: set[str]) -> list[dict[str, Any]]:
        """Stop serving the models whose directory is not `present`, and forget refusals of those never served."""
        for name in [n for n in self.refused if n not in present and n not in self._models]:
            self.refused.pop(name, None)
            if self.on_change is not None:
                self.on_change()
        return [self.remove(name) for name in [n for n in self._models if n not in present]]

    def remove(self, name: str) -> dict[str, Any]:
        """Stop serving `name` (its directory is gone); requests already running finish on the object they hold."""

        def drop(name: str) -> dict[str, Any]:
            old = self._models.pop(name, None)
            self._candidates.pop(name, None)
            self.refused.pop(name, None)
            self.refused_candidates.pop(name, None)
            log.info("%s removed from the registry: no longer served (was v%s)", name, old.version if old else None)
            return {"model": name, "status": "removed", "previous_version": old.version if old else None}

        return self._changing(drop, name)

    def candidate(self, name: str) -> CandidateSlot | None:
        return self._candidates.get(name)

    def candidates(self) -> dict[str, dict[str, Any]]:
        return {name: slot.describe() for name, slot in self._candidates.items()}

    def reload_candidate(self, name: str) -> dict[str, Any]:
        """Follow `name`'s CANDIDATE: load a new candidate beside CURRENT (checked like a reload), change its mode, or drop it.

        A candidate that cannot be served is refused (listed under refused_candidates) and
        dropped: CURRENT answers everything, as without a candidate.
        """
        return self._changing(self._reload_candidate, name)

    def _reload_candidate(self, name: str) -> dict[str, Any]:
        slot = self._candidates.get(name)
        try:
            wanted = self.registry.candidate(name)
            if wanted is not None and name in self._models and wanted.version == self._models[name].version:
                raise RegistryError(f"{name}: the candidate v{wanted.version} is the version CURRENT serves")
            model = slot.model if slot and wanted and slot.model.version == wanted.version else self._load_candidate(name, wanted)
        except Exception as exc:  # any failure is a refusal: CURRENT answers everything
            if not isinstance(exc, RegistryError | ModelLoadError):
                log.exception("candidate of %s failed unexpectedly", name)
            self._candidates.pop(name, None)
            reason = str(exc)[:2000]
            self.refused_candidates[name] = {"reason": reason, "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
            log.warning("candidate of %s refused; CURRENT answers everything: %s", name, reason)
            raise ReloadRefused(reason) from exc
        self.refused_candidates.pop(name, None)
        if wanted is None or model is None:
            if self._candidates.pop(name, None) is not None:
                log.info("candidate of %s cleared", name)
            return {"model": name, "status": "no candidate"}
        self._candidates[name] = CandidateSlot(model, wanted.mode, wanted.percent)  # one reference swap, as for CURRENT
        log.info("candidate of %s: v%d, %s %g%%", name, model.version, wanted.mode, wanted.percent)
        return {"model": name, "status": "candidate", **self._candidates[name].describe()}

    def _load_candidate(self, name: str, wanted: Candidate | None) -> LoadedModel | None:
        return None if wanted is None else self.load(name, wanted.version)

    def __contains__(self, name: str) -> bool:
        return name in self._models

    def served(self) -> dict[str, LoadedModel]:
        return dict(self._models)

    def reload(self, name: str) -> dict[str, Any]:
        """Load `name`'s CURRENT version beside the served one and swap it in; raise ReloadRefused on any failure.

        Any failure at all is a refusal: the old version keeps serving and the reason is
        listed under `refused_reloads`. An exception that is not a RegistryError or
        ModelLoadError is a bug, logged with its traceback, but still only a refusal.
        """
        return self._changing(self._reload, name)

    def _changing(self, change: Callable[[str], dict[str, Any]], name: str) -> dict[str, Any]:
        """One change at a time; the worker group hears of every attempt, refused or not."""
        try:
            with self._lock:
                return change(name)
        finally:
            if self.on_change is not None:
                self.on_change()

    def _reload(self, name: str) -> dict[str, Any]:
        old = self._models.get(name)
        try:
            target = self.registry.current(name)
            if old is not None and old.version == target.version:
                self.refused.pop(name, None)
                return {"model": name, "status": "unchanged", "version": old.version}
            if old is not None:
                self._same_kind(old, target)
            new = self._load(target)
        except (RegistryError, ModelLoadError) as exc:
            raise self._refuse(name, old, str(exc)) from exc
        except Exception as exc:
            log.exception("reload of %s failed unexpectedly", name)
            raise self._refuse(name, old, f"unexpected {type(exc).__name__}: {exc}") from exc
        self._models[name] = new  # one reference swap: requests in flight keep the old object
        self.refused.pop(name, None)
        if old is None:
            log.info("added %s v%d (a %s model): served", name, new.version, new.task.name)
        else:
            log.info("reloaded %s: v%d -> v%d", name, old.version, new.version)
        return {
            "model": name,
            "status": "reloaded",
            "previous_version": old.version if old else None,
            "version": new.version,
            "providers": new.providers,
        }

    @staticmethod
    def _same_kind(old: LoadedModel, target: ModelVersion) -> None:
        """A served model keeps its kind (and a classifier its answers' shape): its clients would break. ModelLoadError otherwise."""
        metadata = target.read_metadata()
        if validate_metadata(metadata):
            return  # the load refuses it, saying what is wrong
        task, kind = task_for(metadata), metadata["preprocessing"].get("kind")
        if type(task) is not type(old.task):
            raise ModelLoadError(
                f"{target.name} v{target.version} is a {kind!r} model ({task.name}, {len(metadata['labels'])} labels); "
                f"{target.name} is served as {old.task.name} ({len(old.labels)} labels) by v{old.version}: its clients would break, "
                "serve it under a new name"
            )

    def _refuse(self, name: str, old: LoadedModel | None, reason: str) -> ReloadRefused:
        reason = reason[:2000]
        self.refused[name] = {"reason": reason, "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        if old is None:
            log.warning("%s is not served: %s", name, reason)
        else:
            log.warning("reload of %s refused, still serving v%s: %s", name, old.version, reason)
        return ReloadRefused(reason)

    def candidate_pointer(self, name: str) -> str:
        """CANDIDATE's content and modification time: a key that changes whenever the file does (for the watcher)."""
        path = self.registry.root / name / CANDIDATE_FILE
        try:
            stamp = path.stat().st_mtime_ns
            return f"{read_limited(path, MAX_CANDIDATE_BYTES)!r}@{stamp}"
        except OSError as exc:  # none, or not a regular file, or too large: CANDIDATE reports the reason when read
            return "none" if isinstance(exc, FileNotFoundError) else f"unusable ({exc})@{stamp}"

    def pointer(self, name: str) -> str:
        """What CURRENT says for `name`, as a key that changes whenever the file does (for the watcher)."""
        try:
            version = self.registry.current_version(name)
        except RegistryError as exc:
            version = f"unusable ({exc})"
        try:
            stamp = (self.registry.root / name / CURRENT_FILE).stat().st_mtime_ns
        except OSError:
            stamp = 0
        return f"{version}@{stamp}"

    def model_key(self, name: str) -> str:
        """CURRENT, and the size and time of every file of the version it names: a key that changes until a
        model being copied into the registry is complete (the watcher retries a refused new model when it does)."""
        parts = [self.pointer(name)]
        with contextlib.suppress(RegistryError, OSError):
            version = self.registry.current_version(name)
            if version is not None:
                for path in sorted((self.registry.root / name / str(version)).iterdir()):
                    stat = path.stat()
                    parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
        return "|".join(parts)

    def batch_size(self, model: LoadedModel) -> int:
        return max_batch_size(self.settings, model.name, model.task, self.providers)

    def describe_model(self, model: LoadedModel) -> dict[str, Any]:
        """GET /models/{name}: the served version, the routes that reach it, its batch size and candidate."""
        predict = f"/models/{model.name}/predict"
        return model.describe() | {
            "endpoint": own_endpoint(model.name) or predict,
            "predict_endpoint": predict,
            "max_batch_size": self.batch_size(model),
            "candidate": self.candidates().get(model.name),
        }

    def describe(self) -> dict[str, Any]:
        return {
            "models": [self.describe_model(m) for m in self.served().values()],
            "model_root": str(self.registry.root),
            "providers_requested": self.providers,
            "gpus": cuda_device_count(),
            "onnxruntime": ort.__version__,
            "cpu": cpu_report(),
            "refused_reloads": dict(self.refused),
            "refused_candidates": dict(self.refused_candidates),
        }

    def versions(self) -> dict[str, int]:
        return {name: model.version for name, model in self.served().items()}


class CurrentWatcher:
    """Keeps one worker process on CURRENT: polls it, and carries out reloads other workers ask for.

    Every MODELSERVE_RELOAD_POLL_S seconds (0: never) a model whose CURRENT no longer
    names the served version is reloaded; a refused pointer is not retried until the
    CURRENT file changes (rewriting it, even with the same number, retries). Every
    WATCH_TICK_S it also looks for a reload request from the worker that took a
    POST /admin/reload (service/core/workers.py), polling on or off. The thread never
    dies: an unexpected error is logged with its traceback and the next tick goes on
    (an uncaught exception used to end it for good, and the workers stayed on mixed
    versions).
    """

    def __init__(self, runtime: ModelRuntime, poll_s: float, group: WorkerGroup | None = None, tick_s: float = WATCH_TICK_S) -> None:
        self.runtime, self.poll_s, self.group, self.tick_s = runtime, poll_s, group, tick_s
        self._refused_pointers: dict[str, str] = {}
        self._candidate_pointers: dict[str, str] = {name: runtime.candidate_pointer(name) for name in runtime.served()}
        self._next_poll = time.monotonic() + poll_s
        if group is not None:  # every reload attempt, wherever it comes from, is published to the other workers
            runtime.on_change = lambda: group.publish(runtime.versions(), dict(runtime.refused), runtime.candidates())
            runtime.on_change()

    def start(self) -> CurrentWatcher:
        threading.Thread(target=self._run, name="current-watcher", daemon=True).start()
        return self

    def _run(self) -> None:
        while True:
            time.sleep(self.tick_s)
            try:
                self.tick()
            except Exception:
                log.exception("CURRENT watcher: unexpected error; it goes on")

    def tick(self) -> None:
        if self.group is not None:
            request = self.group.pending_request()
            if request is not None:
                self.carry_out(request)
        if self.poll_s > 0 and time.monotonic() >= self._next_poll:
            self._next_poll = time.monotonic() + self.poll_s
            self.follow_current()

    def carry_out(self, request: dict[str, Any]) -> None:
        """Another worker's reload request: reload the models it names (all served ones if it names none), then confirm."""
        assert self.group is not None
        if not request.get("models"):  # a reload of everything: the registry's list of models first
            self.runtime.sync()
        names = [n for n in request.get("models") or self.runtime.served() if n in self.runtime or n in self.runtime.wanted()]
        for name in names:
            with contextlib.suppress(ReloadRefused):  # recorded in runtime.refused and published
                self.runtime.reload(name)
            with contextlib.suppress(ReloadRefused):
                self.runtime.reload_candidate(name)
        self.group.handled = max(self.group.handled, request["generation"])
        # the confirmation the asking worker waits for
        self.group.publish(self.runtime.versions(), dict(self.runtime.refused), self.runtime.candidates())

    def follow_candidates(self) -> None:
        """A changed CANDIDATE file (new version, new mode or percentage, removed) is followed at once."""
        for name in self.runtime.served():
            pointer = self.runtime.candidate_pointer(name)
            if self._candidate_pointers.get(name) == pointer:
                continue
            self._candidate_pointers[name] = pointer
            with contextlib.suppress(ReloadRefused):  # recorded in runtime.refused_candidates
                self.runtime.reload_candidate(name)

    def follow_registry(self) -> None:
        """Models added to the registry are loaded, removed ones dropped; a refused new model is retried only once its files change."""
        present = set(self.runtime.registry.model_names())
        for name in [n for n in self._refused_pointers if n not in present]:
            del self._refused_pointers[name]
        self.runtime.drop_missing(present)
        for name in self.runtime.wanted():
            if name in self.runtime:
                continue
            key = self.runtime.model_key(name)
            if self._refused_pointers.get(name) == key:
                continue
            try:
                self.runtime.reload(name)
                self._refused_pointers.pop(name, None)
            except ReloadRefused:
                self._refused_pointers[name] = key

    def follow_current(self) -> None:
        self.follow_registry()
        self.follow_candidates()
        for name, model in self.runtime.served().items():
            pointer = self.runtime.pointer(name)
            if pointer.startswith(f"{model.version}@"):
                self._refused_pointers.pop(name, None)
                if self.runtime.refused.pop(name, None) is not None and self.runtime.on_change is not None:
                    self.runtime.on_change()  # CURRENT is back on the served version: the refusal is over
                continue
            if self._refused_pointers.get(name) == pointer:
                continue
            try:
                self.runtime.reload(name)
                self._refused_pointers.pop(name, None)
            except ReloadRefused:
                self._refused_pointers[name] = pointer

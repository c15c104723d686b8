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

import ctypes
import datetime as dt
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from service.config import PROVIDER_ALIASES, Settings
from service.preprocessing import (
    ImagePreprocessor,
    Preprocessor,
    TabularPreprocessor,
    TextPreprocessor,
    load_preprocessor,
)
from service.registry import ModelVersion, Registry, RegistryError

log = logging.getLogger("modelserve.runtime")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
TENSORRT_LIBRARY = "libnvinfer.so.10"  # TensorRT 10, what onnxruntime-gpu 1.31's provider links
SMOKE_TEXTS = ("An absolutely wonderful film, I loved every minute of it.", "A dull, boring and terrible waste of time.")


class ModelLoadError(RuntimeError):
    """A model version could not be loaded or failed its smoke prediction."""


def cuda_device_count() -> int:
    """GPUs the NVIDIA driver reports; 0 when there is no driver.

    onnxruntime-gpu lists the CUDA provider as available whether or not a GPU exists,
    and asking for it on a machine without one fills the log with errors.
    """
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def _library_loads(name: str) -> bool:
    try:
        ctypes.CDLL(name)
        return True
    except OSError:
        return False


def resolve_providers(preference: Sequence[str]) -> list[str]:
    """Providers to request, in preference order: built into this onnxruntime and usable here.

    onnxruntime-gpu lists TensorRT whether or not TensorRT is installed, and a session
    that asks for it without the library logs an error before falling back.
    """
    available = set(ort.get_available_providers())
    wanted = [PROVIDER_ALIASES[p] for p in preference]
    if any(p in GPU_PROVIDERS and p in available for p in wanted):
        if cuda_device_count() > 0:
            if hasattr(ort, "preload_dlls"):
                ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* pip packages, when installed
            if not _library_loads(TENSORRT_LIBRARY):
                log.info("TensorRT provider skipped: %s is not installed", TENSORRT_LIBRARY)
                wanted = [p for p in wanted if p != "TensorrtExecutionProvider"]
        else:
            wanted = [p for p in wanted if p not in GPU_PROVIDERS]
    chosen = [p for p in wanted if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")  # always the last resort
    return chosen


@dataclass
class LoadedModel:
    """One model version with its session and preprocessing, ready to predict."""

    version_ref: ModelVersion
    metadata: dict[str, Any]
    session: ort.InferenceSession
    preprocessor: Preprocessor
    requested_providers: list[str]
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
        return self.session.get_providers()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        inputs = self.metadata["inputs"][0]["name"]
        return self.session.run(None, {inputs: batch})[0]

    def predict(self, items: Sequence[Any]) -> list[dict[str, Any]]:
        """Validated items (texts, decoded images, feature rows) -> one answer each."""
        if not items:
            return []
        outputs = self.infer(self.preprocessor.transform(items))
        return self.postprocess(outputs)

    def postprocess(self, outputs: np.ndarray) -> list[dict[str, Any]]:
        stamp = {"model": self.name, "version": self.version}
        if isinstance(self.preprocessor, TextPreprocessor):
            negative, positive = self.labels
            threshold = float(self.metadata["preprocessing"].get("threshold", 0.5))
            return [
                {"label": positive if p >= threshold else negative, "probability_positive": float(p), **stamp}
                for p in outputs.reshape(-1)
            ]
        if isinstance(self.preprocessor, ImagePreprocessor):
            labels = self.labels
            return [
                {"label": labels[int(row.argmax())], "score": float(row.max()), "probabilities": dict(zip(labels, map(float, row))), **stamp}
                for row in outputs
            ]
        unit = self.metadata["preprocessing"].get("unit", "")
        return [{"price": float(v), "unit": unit, **stamp} for v in outputs.reshape(-1)]

    def smoke_inputs(self) -> list[Any]:
        """A few inputs of the right kind, to prove the model answers before it is served."""
        pre = self.preprocessor
        if isinstance(pre, TextPreprocessor):
            return list(SMOKE_TEXTS)
        if isinstance(pre, ImagePreprocessor):
            rng = np.random.default_rng(0)
            shape = (pre.spec.height, pre.spec.width, 3)
            return [np.full(shape, 128, np.uint8), rng.integers(0, 256, shape, dtype=np.uint8)]
        assert isinstance(pre, TabularPreprocessor)
        typical = pre.scaler.inverse_example()
        return [typical, typical * 1.1]

    def smoke_check(self) -> None:
        """Predict on smoke inputs (also warming the session); refuse nonsense."""
        items = self.smoke_inputs()
        try:
            single = self.predict(items[:1])
            batch = self.predict(items)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"{self.name} v{self.version}: smoke prediction failed: {exc}") from exc
        if len(single) != 1 or len(batch) != len(items):
            raise ModelLoadError(f"{self.name} v{self.version}: smoke prediction returned {len(batch)} answers for {len(items)} inputs")
        for answer in batch:
            numbers = [v for k, v in answer.items() if isinstance(v, float)]
            numbers += list(answer.get("probabilities", {}).values())
            if not all(np.isfinite(numbers)):
                raise ModelLoadError(f"{self.name} v{self.version}: smoke prediction is not finite: {answer}")
            if "probabilities" in answer and abs(sum(answer["probabilities"].values()) - 1.0) > 1e-3:
                raise ModelLoadError(f"{self.name} v{self.version}: probabilities do not sum to 1: {answer}")
            if "probability_positive" in answer and not 0.0 <= answer["probability_positive"] <= 1.0:
                raise ModelLoadError(f"{self.name} v{self.version}: probability outside [0, 1]: {answer}")

    def describe(self) -> dict[str, Any]:
        meta = self.metadata
        test = {k: v for k, v in meta["metrics"].get("test", {}).items() if not isinstance(v, dict)}
        return {
            "name": self.name,
            "version": self.version,
            "task": meta["task"],
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
        }


def load_model(version: ModelVersion, providers: Sequence[str], intra_op_threads: int = 0) -> LoadedModel:
    """Verify, open, check and warm one version. Raises RegistryError or ModelLoadError."""
    metadata = version.verify()  # metadata schema + sha256 of model.onnx
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads
    options.log_severity_level = 3  # errors only: a CPU-only machine starts quietly
    try:
        session = ort.InferenceSession(str(version.model_path), options, providers=list(providers))
    except Exception as exc:
        raise ModelLoadError(f"{version.name} v{version.version}: onnxruntime cannot load {version.model_path.name}: {exc}") from exc
    expected = [i["name"] for i in metadata["inputs"]]
    actual = [i.name for i in session.get_inputs()]
    if expected != actual:
        raise ModelLoadError(f"{version.name} v{version.version}: graph inputs {actual} differ from metadata {expected}")
    try:
        preprocessor = load_preprocessor(version.path, metadata)
    except (OSError, KeyError, ValueError) as exc:
        raise ModelLoadError(f"{version.name} v{version.version}: preprocessing assets unusable: {exc}") from exc
    model = LoadedModel(version, metadata, session, preprocessor, list(providers))
    model.smoke_check()
    dropped = [p for p in providers if p not in model.providers]
    if dropped:
        log.info("%s v%d: requested %s did not load; running on %s", version.name, version.version, dropped, model.providers)
    log.info("loaded %s v%d on %s", version.name, version.version, ", ".join(model.providers))
    return model


class ReloadRefused(RuntimeError):
    """A new version was not swapped in; the old one keeps serving."""


class ModelRuntime:
    """The served models, one CURRENT version each, swappable while serving."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = Registry(settings.model_root)
        self.providers = resolve_providers(settings.providers)
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()  # one reload at a time
        self.refused: dict[str, dict[str, Any]] = {}

    def model_names(self) -> list[str]:
        served = self.registry.served_models()
        if self.settings.models:
            missing = [m for m in self.settings.models if m not in served]
            if missing:
                raise RegistryError(f"requested models {missing} have no CURRENT under {self.registry.root} (have {served})")
            return list(self.settings.models)
        return served

    def load(self, name: str, version: int | None = None) -> LoadedModel:
        ref = self.registry.current(name) if version is None else self.registry.get(name, version)
        return load_model(ref, self.providers, self.settings.intra_op_threads)

    def load_all(self) -> None:
        names = self.model_names()
        if not names:
            raise RegistryError(f"no model under {self.registry.root.resolve()} has a CURRENT version to serve")
        for name in names:
            self._models[name] = self.load(name)

    def get(self, name: str) -> LoadedModel:
        return self._models[name]

    def __contains__(self, name: str) -> bool:
        return name in self._models

    def served(self) -> dict[str, LoadedModel]:
        return dict(self._models)

    def reload(self, name: str) -> dict[str, Any]:
        """Load `name`'s CURRENT version beside the served one and swap it in; raise ReloadRefused on any failure."""
        with self._lock:
            old = self._models.get(name)
            try:
                target = self.registry.current(name)
                if old is not None and old.version == target.version:
                    return {"model": name, "status": "unchanged", "version": old.version}
                new = load_model(target, self.providers, self.settings.intra_op_threads)
            except (RegistryError, ModelLoadError) as exc:
                self.refused[name] = {"reason": str(exc), "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
                log.warning("reload of %s refused, still serving v%s: %s", name, old.version if old else None, exc)
                raise ReloadRefused(str(exc)) from exc
            self._models[name] = new  # one reference swap: requests in flight keep the old object
            self.refused.pop(name, None)
            log.info("reloaded %s: v%s -> v%d", name, old.version if old else None, new.version)
            return {"model": name, "status": "reloaded", "previous_version": old.version if old else None, "version": new.version, "providers": new.providers}

    def pending_changes(self) -> list[str]:
        """Models whose CURRENT differs from what is served (for the CURRENT watcher)."""
        changed = []
        for name, model in self.served().items():
            try:
                current = self.registry.current_version(name)
            except RegistryError:
                continue
            if current is not None and current != model.version:
                changed.append(name)
        return changed

    def describe(self) -> dict[str, Any]:
        return {
            "models": [m.describe() for m in self.served().values()],
            "model_root": str(self.registry.root),
            "providers_requested": self.providers,
            "gpus": cuda_device_count(),
            "onnxruntime": ort.__version__,
            "refused_reloads": self.refused,
        }


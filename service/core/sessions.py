"""onnxruntime sessions: which providers can really run here, and how a call reaches a session.

Provider preference is TensorRT -> CUDA -> CPU, filtered by what can really work: GPU
providers only when the NVIDIA driver reports a device, TensorRT only when its library
loads. What a session really got is read back from `get_providers()`.

How a call runs depends on where:
- CPU, adaptive threads (MODELSERVE_INTRA_OP_THREADS=0): a request alone in its worker
  uses every CPU the process may use (lowest latency; with one worker per CPU the others
  are idle then too); when several are in progress each call gets a single-threaded
  session, so concurrent requests run side by side instead of fighting over one thread
  pool (highest throughput; benchmarks/results/compare.md has the raw numbers). "Every
  CPU" is the affinity capped by the cgroup quota: a container given 2 CPUs on a 64-core
  host opens 2-thread sessions, not 64.
- GPU: io-binding, so the input is copied to the device once and the output is bound
  (not copied through an intermediate host buffer); TensorRT keeps its engines in a cache
  keyed by the model's sha256 and runs in fp16 only when asked and accurate enough.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.core.config import PROVIDER_ALIASES, available_cpus

log = logging.getLogger("modelserve.sessions")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
TENSORRT_LIBRARY = "libnvinfer.so.10"  # TensorRT 10, what onnxruntime-gpu 1.31's provider links


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


def cores() -> int:
    """CPUs this process may use (affinity, cgroup quota): what a call alone may use."""
    return available_cpus()


@dataclass(frozen=True)
class SessionConfig:
    """How to open a model's sessions: providers in order, CPU threads (0: adaptive), TensorRT options."""

    providers: tuple[str, ...]
    intra_op_threads: int = 0
    tensorrt_fp16: bool = False
    engine_cache: Path | None = None

    @property
    def gpu(self) -> bool:
        return any(p in GPU_PROVIDERS for p in self.providers)


def _provider_options(config: SessionConfig, sha256: str) -> list[str | tuple[str, dict[str, str]]]:
    chosen: list[str | tuple[str, dict[str, str]]] = []
    for provider in config.providers:
        if provider == "TensorrtExecutionProvider" and config.engine_cache is not None:
            cache = config.engine_cache / sha256
            cache.mkdir(parents=True, exist_ok=True)
            fp16 = str(config.tensorrt_fp16)
            options = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache), "trt_timing_cache_enable": "True"}
            chosen.append((provider, options | {"trt_timing_cache_path": str(cache), "trt_fp16_enable": fp16}))
        elif provider == "CUDAExecutionProvider":
            # Grow the memory arena by what is asked, not in doubling chunks: memory stays flat across reloads.
            chosen.append((provider, {"arena_extend_strategy": "kSameAsRequested"}))
        else:
            chosen.append(provider)
    return chosen


def open_session(path: Path, config: SessionConfig, sha256: str, threads: int, spin: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: a CPU-only machine starts quietly
    if not spin:
        # Pool threads that spin between calls burn the cores that decoding and other requests need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=_provider_options(config, sha256))


class Sessions:
    """One model file's sessions; `run` picks one per call (see the module docstring)."""

    def __init__(self, path: Path, sha256: str, config: SessionConfig, io_binding: bool | None = None) -> None:
        self.config = config
        adaptive = not config.gpu and config.intra_op_threads == 0 and cores() > 1
        # The wide session runs a request that is alone: its threads may spin between operators
        # (faster handoffs); under load the single-threaded sessions run and the wide one sleeps.
        self.primary = open_session(path, config, sha256, cores() if adaptive else config.intra_op_threads, spin=adaptive)
        self.narrow = open_session(path, config, sha256, 1) if adaptive else None
        self.io_binding = config.gpu if io_binding is None else io_binding
        self.device = "cuda" if config.gpu else "cpu"
        self._lock = threading.Lock()
        self._in_flight = 0

    @property
    def providers(self) -> list[str]:
        return self.primary.get_providers()

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.primary.get_inputs()]

    def run(self, feed: Mapping[str, np.ndarray], alone: bool | None = None) -> list[np.ndarray]:
        """`alone`: the caller knows whether other requests are in progress (the HTTP executor does);
        None: decide by the calls running right now."""
        if self.narrow is None:
            return self._run(self.primary, feed)
        with self._lock:
            wide = (self._in_flight == 0) if alone is None else alone
            self._in_flight += 1
        try:
            return self._run(self.primary if wide else self.narrow, feed)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _run(self, session: ort.InferenceSession, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if not self.io_binding:
            return session.run(None, dict(feed))
        binding = session.io_binding()
        for name, array in feed.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))  # copied to the device once
        for output in session.get_outputs():
            binding.bind_output(output.name, self.device)  # left where it is computed, copied back once
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def describe(self) -> dict[str, Any]:
        threads: int | str = (
            f"adaptive: {cores()} for a call alone, 1 per call when calls overlap" if self.narrow else self.config.intra_op_threads
        )
        described: dict[str, Any] = {"threads": threads or "onnxruntime default", "io_binding": self.io_binding}
        if "TensorrtExecutionProvider" in self.providers:
            described["tensorrt"] = {"fp16": self.config.tensorrt_fp16, "engine_cache": str(self.config.engine_cache)}
        return described

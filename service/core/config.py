"""One typed settings object, read from `MODELSERVE_*` environment variables.

Defaults work on a laptop and in the container. The table in docs/configuration.md is
generated from the settings' own documentation (`python -m service.core.config` prints it,
a test compares), so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from service.core.errors import ConfigError
from service.core.int8_reference import Int8Bounds
from service.core.registry import FileLimits

PREFIX = "MODELSERVE_"
PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
MiB = 1024 * 1024


def available_cpus() -> int:
    """CPUs this process may use: its CPU affinity, capped by the cgroup CPU quota (a container's --cpus), at least 1.

    The quota is read as BentoML reads it for its own `workers="cpu_count"` (cgroup v1 and v2:
    service/patches/bentoml_cpu_count.py).
    """
    affinity = len(os.sched_getaffinity(0))
    if importlib.util.find_spec("bentoml") is None:  # training without the serving extra
        return affinity
    from service.patches.bentoml_cpu_count import cpu_quota

    return max(1, min(affinity, int(cpu_quota())))


def setting(default: Any, doc: str) -> Any:
    """A settings field: its default and the line that documents it (docs/configuration.md's table is made from these)."""
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


NON_NEGATIVE = ("intra_op_threads", "reload_poll_s", "batch_max_delay_ms", "work_threads", "workers", "grpc_port")
BATCHING = ("auto", "on", "off")
T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    model_root: Path = setting(
        Path("models"), "registry root, the catalog: every model in it with a CURRENT version is served, by the kind its metadata names"
    )
    models: tuple[str, ...] = setting((), "comma-separated names: serve only these (empty: every model with a CURRENT)")
    providers: tuple[str, ...] = setting(
        ("tensorrt", "cuda", "cpu"),
        "execution provider preference, first that really loads wins; GPU providers are skipped when no GPU is present",
    )
    intra_op_threads: int = setting(
        0,
        "onnxruntime threads per CPU session; 0: adaptive, a call alone in its worker uses every CPU the process may use, "
        "concurrent calls one each (benchmarks/results/compare.md)",
    )
    workers: int = setting(
        0,
        "BentoML worker processes, each loading every model; 0: one per CPU the process may use (cgroup quota respected, benchmarks/results/compare.md)",
    )
    grpc_port: int = setting(
        0,
        "the Open Inference Protocol over gRPC on this port, served by every worker (SO_REUSEPORT); 0: off. KServe's convention is 8081, Triton's 8001",
    )
    grpc_host: str = setting("0.0.0.0", "the address the gRPC server listens on (with MODELSERVE_GRPC_PORT)")
    max_request_bytes: int = setting(32 * MiB, "largest request body or gRPC message; larger gets 413 (gRPC: RESOURCE_EXHAUSTED)")
    max_image_bytes: int = setting(10 * MiB, "largest single image file")
    max_model_bytes: int = setting(
        2048 * MiB, "largest model file (model.onnx, its INT8 variant) a version may have; a larger one is refused at load"
    )
    max_asset_bytes: int = setting(
        256 * MiB, "largest preprocessing file (vocab.json, scaler.json) a version may have; a larger one is refused at load"
    )
    max_image_pixels: int = setting(40_000_000, "largest image (width x height), checked before decoding")
    max_items: int = setting(64, "most images, texts or rows in one request")
    max_text_chars: int = setting(50_000, "longest text; longer is refused with 400, never truncated silently")
    max_request_pixels: int = setting(
        100_000_000, "most pixels in one request's images, summed from their headers before anything is decoded"
    )
    max_pending_pixels: int = setting(
        200_000_000, "most image pixels being decoded or waiting to be, per worker; a request beyond it gets a fast 503 with Retry-After"
    )
    work_threads: int = setting(
        0,
        "threads per worker and model that decode, preprocess and run CPU inference; 0: the CPUs the process may use "
        "(cgroup quota respected), so a worker that holds most connections can still use every CPU",
    )
    batching: str = setting(
        "auto", "merge concurrent requests into one onnxruntime call: on, off, or auto (on for GPU providers, off on the CPU)"
    )
    batch_max_delay_ms: int = setting(
        2, "with batching, the longest a request waits for others to join its batch (Triton's max_queue_delay)"
    )
    max_batch_size: dict[str, int] = setting(
        {},
        "largest onnxruntime batch per model, as `name=size,...`; a model not named uses its task's size for the provider (GET /models shows it)",
    )
    queue_timeout_ms: int = setting(30_000, "how long an admitted request may wait for a worker thread or a batch before it gets a 503")
    int8: bool = setting(
        True,
        "run a version's INT8 variant on the CPU provider where, at load, it answers its reference set like fp32 (the two bounds below); GPUs always run model.onnx",
    )
    int8_min_label_agreement: float = setting(
        0.99,
        "the INT8 variant serves only if it gives fp32's label on at least this share of its reference inputs on this CPU "
        "(those where fp32's top two classes are more than 0.1 apart; a swap closer than that is not counted)",
    )
    int8_max_prob_diff: float = setting(
        0.05, "... and no probability on them differs from fp32's by more than this; else model.onnx serves and GET /models says why"
    )
    tensorrt_fp16: bool = setting(
        False, "TensorRT in fp16, kept only when its answers match fp32 on the smoke inputs (probabilities within 1e-2)"
    )
    engine_cache: Path = setting(
        Path("/tmp/modelserve-engines"), "TensorRT engine cache, one folder per model.onnx sha256 (built once per GPU)"
    )
    tracing: bool = setting(False, "OpenTelemetry spans for requests (BentoML's tracing config exports them)")
    access_log: bool = setting(False, "one log line per request (BentoML's access log)")
    reload_poll_s: int = setting(
        2,
        "seconds between checks of the registry: a changed CURRENT is loaded, checked and swapped in, a new model served, a removed one dropped (0: only POST /admin/reload)",
    )
    request_timeout_s: int = setting(120, "BentoML request timeout")
    header_timeout_s: int = setting(
        10,
        "request line and headers must arrive within this many seconds of the connection opening (or of a kept-alive connection's next byte), else 408 and close",
    )
    body_timeout_s: int = setting(60, "the whole request body must arrive within this many seconds of its headers, else 408 and close")
    max_json_values: int = setting(
        200_000,
        "most values (numbers, strings, keys) in one JSON body, counted before it is parsed (parsing holds every thread of the worker: about 15 ms per 200,000 here); more gets 413",
    )
    max_header_bytes: int = setting(64 * 1024, "largest request line and headers together; larger gets 431 and the connection is closed")
    admin_token: str = setting("", "bearer token for POST /admin/reload; empty disables the admin API (403)")
    drift: bool = setting(
        True,
        "compare each served version's live inputs and answers with its reference profile (profile.json): GET /models/{name}/drift, modelserve_drift_* gauges",
    )
    drift_sample: float = setting(1.0, "share of requests (0-1) whose inputs and answers are summarized for drift and the prediction log")
    drift_window: int = setting(1000, "live window per model version and worker: the most recent items summarized")
    drift_min_items: int = setting(200, "items the workers' windows must hold together before a version's drift is scored")
    drift_interval_s: int = setting(10, "seconds between drift computations (each worker; the workers' windows are merged)")
    drift_threshold: float = setting(
        0.2, "Jensen-Shannon distance above which a feature counts as drifted (keep deploy/monitoring/alerts.yml in step)"
    )
    prediction_log_dir: str = setting(
        "", "directory of the prediction log: sampled requests as Parquet files, one folder per model (empty: no log)"
    )
    prediction_log_inputs: bool = setting(False, "also log the raw input where a kind has one that fits a table (texts)")
    prediction_log_file_mb: int = setting(32, "a prediction log file is closed and a new one started at this size ...")
    prediction_log_file_s: int = setting(300, "... or when its first row is this many seconds old")
    prediction_log_keep_mb: int = setting(1024, "per model, the oldest prediction log files are deleted beyond this total size")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        return _from_env(cls, environ)

    def worker_count(self) -> int:
        """MODELSERVE_WORKERS, or for 0 one per CPU this process may use (affinity and cgroup quota: `available_cpus`)."""
        return self.workers or available_cpus()

    def pool_threads(self) -> int:
        """Threads of each worker's pool per model: every CPU the process may use, not the worker's share.

        Connections are not spread evenly over the workers: the kernel hands a burst of new
        connections to whichever worker is waiting in accept, so at 8 clients all of them
        often sat on one of two workers. With pools of one thread (the share of 2 CPUs over 2
        workers) that worker ran one request at a time on one core: half the throughput, in
        about half the runs (benchmarks/results/compare.md). Overlapping calls run the
        single-threaded sessions, so a pool thread is at most one busy core.
        """
        return available_cpus()

    def cpus_per_worker(self) -> int:
        """Each worker's share of the CPUs this process may use, at least 1: what its thread pools are sized by.

        With one worker per CPU, a worker whose pools each assumed every CPU ran several
        times more compute threads than there are CPUs (benchmarks/results/threads.md).
        """
        return max(1, available_cpus() // self.worker_count())

    def file_limits(self) -> FileLimits:
        """The largest registry files of each kind that a version may have."""
        return FileLimits(model_bytes=self.max_model_bytes, asset_bytes=self.max_asset_bytes)

    def int8_bounds(self) -> Int8Bounds:
        return Int8Bounds(self.int8_min_label_agreement, self.int8_max_prob_diff)

    def input_limits(self) -> dict[str, int]:
        """The settings that decide whether an input is valid (a resumed batch job must use the same)."""
        return {"max_text_chars": self.max_text_chars, "max_image_bytes": self.max_image_bytes, "max_image_pixels": self.max_image_pixels}

    def check(self) -> None:
        unknown = [p for p in self.providers if p not in PROVIDER_ALIASES]
        if unknown:
            raise ConfigError(f"{PREFIX}PROVIDERS: unknown {unknown}; use {', '.join(PROVIDER_ALIASES)}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int) and not isinstance(value, bool) and f.name not in NON_NEGATIVE and value <= 0:
                raise ConfigError(f"{PREFIX}{f.name.upper()} must be positive, got {value}")
        for name in ("int8_min_label_agreement", "int8_max_prob_diff"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{PREFIX}{name.upper()} must be between 0 and 1, got {getattr(self, name)}")
        for name in NON_NEGATIVE:
            if getattr(self, name) < 0:
                raise ConfigError(f"{PREFIX}{name.upper()} must be >= 0")
        for model, size in self.max_batch_size.items():
            if size < 1:
                raise ConfigError(f"{PREFIX}MAX_BATCH_SIZE: {model}={size}, must be at least 1")
        if self.batching not in BATCHING:
            raise ConfigError(f"{PREFIX}BATCHING={self.batching!r}: use one of {', '.join(BATCHING)}")
        if not 0.0 <= self.drift_sample <= 1.0:
            raise ConfigError(f"{PREFIX}DRIFT_SAMPLE must be between 0 and 1, got {self.drift_sample}")
        if not 0.0 < self.drift_threshold <= 1.0:
            raise ConfigError(f"{PREFIX}DRIFT_THRESHOLD is a Jensen-Shannon distance: above 0, at most 1; got {self.drift_threshold}")
        if self.grpc_port > 65535:
            raise ConfigError(f"{PREFIX}GRPC_PORT={self.grpc_port} is not a TCP port (1-65535, or 0: off)")
        if self.max_pending_pixels < self.max_request_pixels:
            raise ConfigError(
                f"{PREFIX}MAX_PENDING_PIXELS must be at least {PREFIX}MAX_REQUEST_PIXELS, or the largest request could never run"
            )


@dataclass(frozen=True)
class ClientSettings:
    """What a client of a running service needs (redeploy, benchmarks): where it is and the admin token."""

    url: str = setting("http://127.0.0.1:3000", "the running service, for `python -m training.redeploy`")
    admin_token: str = setting("", "bearer token for POST /admin/reload; empty disables the admin API (403)")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClientSettings:
        return _from_env(cls, environ)

    def check(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"{PREFIX}URL={self.url!r} must start with http:// or https://")


def _from_env(cls: type[T], environ: Mapping[str, str] | None) -> T:
    env = os.environ if environ is None else environ
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        raw = env.get(PREFIX + f.name.upper())
        if raw is not None:
            values[f.name] = _parse(f.name, raw, _default(f))
    settings = cls(**values)
    settings.check()  # type: ignore[attr-defined]
    return settings


def _default(f: dataclasses.Field[Any]) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _parse(name: str, raw: str, default: object) -> object:
    try:
        if isinstance(default, bool):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, str):
            return raw.strip().lower() if name == "batching" else raw
        if isinstance(default, Path):
            return Path(raw)
        parts = [part.strip() for part in raw.split(",") if part.strip()]
        if isinstance(default, tuple):
            return tuple(part.lower() if name == "providers" else part for part in parts)
        if isinstance(default, dict):
            pairs = [part.partition("=") for part in parts]
            bad = [part for part, (_, sep, _) in zip(parts, pairs) if not sep]
            if bad:
                raise ValueError(f"expected name=value pairs, got {bad}")
            return {key.strip(): int(value) for key, _, value in pairs}
        return raw
    except ValueError as exc:
        raise ConfigError(f"{PREFIX}{name.upper()}={raw!r}: {exc}") from None


def settings_table() -> str:
    """The Markdown table of every setting (service and client), for docs/configuration.md."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for cls in (Settings, ClientSettings):
        for f in dataclasses.fields(cls):
            if cls is ClientSettings and f.name in {s.name for s in dataclasses.fields(Settings)}:
                continue  # the admin token is shared: listed once
            default = _default(f)
            if isinstance(default, tuple):
                shown = ",".join(default)
            elif isinstance(default, dict):
                shown = ",".join(f"{k}={v}" for k, v in default.items())
            else:
                shown = str(default)
            rows.append(f"| `{PREFIX}{f.name.upper()}` | `{shown}` | {f.metadata['doc']} |")
    return "\n".join(rows)


def update_table(path: Path) -> None:
    """Replace the settings table in a Markdown page (from its header row to the next blank line) with the current one."""
    lines = path.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("| variable | default | meaning |"))
    end = next(i for i in range(start, len(lines)) if not lines[i].strip())
    path.write_text("".join([*lines[:start], settings_table() + "\n", *lines[end:]]))


if __name__ == "__main__":
    # python -m service.core.config                          print the table
    # python -m service.core.config docs/configuration.md    rewrite that page's copy
    if len(sys.argv) > 1:
        update_table(Path(sys.argv[1]))
    else:
        sys.stdout.write(settings_table() + "\n")

"""One typed settings object, read from `MODELSERVE_*` environment variables.

Defaults work on a laptop and in the container. The README's configuration table is
generated from `SETTINGS_DOC` (python -m service.config prints it), so the two
cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "MODELSERVE_"
PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
MiB = 1024 * 1024


class ConfigError(ValueError):
    """A MODELSERVE_* variable has a value that cannot be used."""


@dataclass(frozen=True)
class Settings:
    model_root: Path = field(default=Path("models"), metadata={"doc": "registry root; each model's CURRENT version is served"})
    models: tuple[str, ...] = field(default=(), metadata={"doc": "comma-separated subset of models to serve (empty: all with a CURRENT)"})
    providers: tuple[str, ...] = field(default=("tensorrt", "cuda", "cpu"), metadata={"doc": "execution provider preference, first that really loads wins; GPU providers are skipped when no GPU is present"})
    intra_op_threads: int = field(default=0, metadata={"doc": "onnxruntime threads per session (0: one per core)"})
    workers: int = field(default=1, metadata={"doc": "BentoML worker processes (each loads every model)"})
    max_request_bytes: int = field(default=32 * MiB, metadata={"doc": "largest request body; larger gets 413"})
    max_image_bytes: int = field(default=10 * MiB, metadata={"doc": "largest single image file"})
    max_image_pixels: int = field(default=40_000_000, metadata={"doc": "largest image (width x height), checked before decoding"})
    max_items: int = field(default=64, metadata={"doc": "most images, texts or rows in one request"})
    max_text_chars: int = field(default=50_000, metadata={"doc": "longest review; longer is refused with 400, never truncated silently"})
    batch_max_delay_ms: int = field(default=2, metadata={"doc": "longest a request is held to build a batch (BentoML's learned wait is clamped to this; see service/batching.py)"})
    image_batch_size: int = field(default=8, metadata={"doc": "largest onnxruntime batch for /classify_image (CPU throughput is flat from 1 to 64: benchmarks/results/batch_sizes.md)"})
    image_batch_wait_ms: int = field(default=30_000, metadata={"doc": "max_latency_ms for /classify_image: queue bound before 503"})
    text_batch_size: int = field(default=64, metadata={"doc": "largest onnxruntime batch for /sentiment"})
    text_batch_wait_ms: int = field(default=30_000, metadata={"doc": "max_latency_ms for /sentiment"})
    tabular_batch_size: int = field(default=512, metadata={"doc": "largest onnxruntime batch for /predict_price"})
    tabular_batch_wait_ms: int = field(default=30_000, metadata={"doc": "max_latency_ms for /predict_price"})
    reload_poll_s: int = field(default=2, metadata={"doc": "seconds between checks of CURRENT; a changed pointer is loaded, checked and swapped in (0: only POST /admin/reload)"})
    request_timeout_s: int = field(default=120, metadata={"doc": "BentoML request timeout"})
    admin_token: str = field(default="", metadata={"doc": "bearer token for POST /admin/reload; empty disables the admin API (403)"})

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values = {}
        for f in dataclasses.fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is None:
                continue
            values[f.name] = _parse(f.name, raw, f.default)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        unknown = [p for p in self.providers if p not in PROVIDER_ALIASES]
        if unknown:
            raise ConfigError(f"{PREFIX}PROVIDERS: unknown {unknown}; use {', '.join(PROVIDER_ALIASES)}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int) and f.name not in ("intra_op_threads", "reload_poll_s", "batch_max_delay_ms") and value <= 0:
                raise ConfigError(f"{PREFIX}{f.name.upper()} must be positive, got {value}")
        for name in ("intra_op_threads", "reload_poll_s", "batch_max_delay_ms"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{PREFIX}{name.upper()} must be >= 0")
        for name in ("image_batch_size", "text_batch_size", "tabular_batch_size"):
            if getattr(self, name) < 2:
                raise ConfigError(f"{PREFIX}{name.upper()} must be at least 2 (BentoML's minimum)")


def _parse(name: str, raw: str, default: object) -> object:
    try:
        if isinstance(default, bool):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, Path):
            return Path(raw)
        if isinstance(default, tuple):
            return tuple(part.strip().lower() if name == "providers" else part.strip() for part in raw.split(",") if part.strip())
        return raw
    except ValueError as exc:
        raise ConfigError(f"{PREFIX}{name.upper()}={raw!r}: {exc}") from None


def settings_table() -> str:
    """The Markdown table of every setting, for the README."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(Settings):
        default = f.default
        shown = ",".join(default) if isinstance(default, tuple) else str(default)
        rows.append(f"| `{PREFIX}{f.name.upper()}` | `{shown}` | {f.metadata['doc']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.stdout.write(settings_table() + "\n")

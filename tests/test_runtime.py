"""Provider resolution and model loading on this (GPU-less) machine, with real sessions."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from service.core.config import ConfigError, Settings
from service.core.registry import Registry
from service.core.runtime import ModelRuntime, load_model
from service.core.sessions import cuda_device_count, resolve_providers

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(cuda_device_count() > 0, reason="checks the CPU-only path")
def test_no_gpu_means_cpu_only_whatever_is_preferred() -> None:
    assert resolve_providers(["tensorrt", "cuda", "cpu"]) == ["CPUExecutionProvider"]
    assert resolve_providers(["cuda"]) == ["CPUExecutionProvider"], "CPU is always the last resort"


def test_sessions_report_the_provider_they_really_use() -> None:
    model = load_model(Registry(ROOT / "models").current("image_classifier"), resolve_providers(["cuda", "cpu"]))
    assert model.providers == model.sessions.primary.get_providers()
    assert set(model.providers) <= set(ort.get_available_providers())


def test_runtime_loads_every_shipped_model() -> None:
    runtime = ModelRuntime(Settings(model_root=ROOT / "models"))
    runtime.load_all()
    assert set(runtime.served()) == {"image_classifier", "imdb_sentiment", "boston_housing"}


def test_batch_sizes_come_from_the_task_unless_configured() -> None:
    settings = Settings.from_env({"MODELSERVE_MAX_BATCH_SIZE": "imdb_sentiment=16"})
    runtime = ModelRuntime(settings)
    assert runtime.batch_size("imdb_sentiment") == 16
    assert runtime.batch_size("image_classifier") == 8, "the image task's CPU size"


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown"):
        Settings.from_env({"MODELSERVE_PROVIDERS": "cuda,openvino"})
    with pytest.raises(ConfigError, match="at least 1"):
        Settings.from_env({"MODELSERVE_MAX_BATCH_SIZE": "imdb_sentiment=0"})
    with pytest.raises(ConfigError, match="name=value"):
        Settings.from_env({"MODELSERVE_MAX_BATCH_SIZE": "16"})
    with pytest.raises(ConfigError, match="MODELSERVE_MAX_ITEMS"):
        Settings.from_env({"MODELSERVE_MAX_ITEMS": "many"})


def test_workers_default_to_one_per_cpu_the_process_may_use() -> None:
    import os

    assert Settings().workers == 0, "the default: one worker per CPU"
    assert 1 <= Settings().worker_count() <= len(os.sched_getaffinity(0))
    assert Settings(workers=3).worker_count() == 3
    with pytest.raises(ConfigError, match="WORKERS"):
        Settings.from_env({"MODELSERVE_WORKERS": "-1"})

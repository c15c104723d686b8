"""Provider resolution and model loading on this (GPU-less) machine, with real sessions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

from service.core.config import ConfigError, Settings
from service.core.registry import Registry
from service.core.runtime import ModelRuntime, load_model, max_batch_size
from service.core.sessions import cuda_device_count, resolve_providers
from service.core.tasks.kinds import task_for

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
    registry, cpu = Registry(ROOT / "models"), ["CPUExecutionProvider"]
    tasks = {name: task_for(registry.current(name).read_metadata()) for name in ("imdb_sentiment", "image_classifier")}
    assert max_batch_size(settings, "imdb_sentiment", tasks["imdb_sentiment"], cpu) == 16
    assert max_batch_size(settings, "image_classifier", tasks["image_classifier"], cpu) == 8, "the image task's CPU size"


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
    assert Settings().workers == 0, "the default: one worker per CPU"
    assert 1 <= Settings().worker_count() <= len(os.sched_getaffinity(0))
    assert Settings(workers=3).worker_count() == 3
    with pytest.raises(ConfigError, match="WORKERS"):
        Settings.from_env({"MODELSERVE_WORKERS": "-1"})


def test_threads_are_sized_from_the_workers_and_the_cpus_the_process_may_use() -> None:
    """A worker's pools get its share of the CPUs; a process pinned to one CPU runs one worker and single-threaded sessions."""
    from service.core.config import available_cpus
    from service.http.executor import Executor

    cpus = available_cpus()
    assert 1 <= cpus <= len(os.sched_getaffinity(0))
    for workers in (1, 2, cpus, cpus + 3):
        settings = Settings(model_root=ROOT / "models", workers=workers)
        executor = Executor(settings, ModelRuntime(settings))
        assert executor.pool("imdb_sentiment")._max_workers == max(1, cpus // workers)
        executor.close()
    model = load_model(Registry(ROOT / "models").current("boston_housing"), ["CPUExecutionProvider"])
    threads = model.sessions.primary.get_session_options().intra_op_num_threads
    assert threads == (cpus if cpus > 1 else 0), "a call alone may use every CPU the process may use, no more"
    pinned = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))});"
        "from service.core.config import Settings; from service.core.registry import Registry; from service.core.runtime import load_model;"
        "m = load_model(Registry('models').current('boston_housing'), ['CPUExecutionProvider']);"
        "print(Settings().worker_count(), Settings().cpus_per_worker(), m.sessions.narrow is None)"
    )
    out = subprocess.run([sys.executable, "-c", pinned], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "1", "True"]

"""Provider resolution and model loading on this (GPU-less) machine, with real sessions."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import onnxruntime as ort
import pytest

from service.core.config import ConfigError, Settings
from service.core.errors import ModelLoadError
from service.core.int8_reference import Int8Bounds
from service.core.registry import METADATA_FILE, Registry
from service.core.runtime import ModelRuntime, load_model, max_batch_size
from service.core.sessions import cuda_device_count, resolve_providers
from service.core.tasks.kinds import task_for

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


def test_the_int8_bounds_are_settings_between_0_and_1() -> None:
    settings = Settings.from_env({"MODELSERVE_INT8_MIN_LABEL_AGREEMENT": "0.95", "MODELSERVE_INT8_MAX_PROB_DIFF": "0.1"})
    assert (settings.int8_bounds().min_label_agreement, settings.int8_bounds().max_prob_diff) == (0.95, 0.1)
    assert Settings().int8_bounds() == Int8Bounds(0.99, 0.05)
    with pytest.raises(ConfigError, match="MODELSERVE_INT8_MAX_PROB_DIFF must be between 0 and 1"):
        Settings.from_env({"MODELSERVE_INT8_MAX_PROB_DIFF": "2"})
    with pytest.raises(ConfigError, match="MODELSERVE_INT8_MIN_LABEL_AGREEMENT"):
        Settings.from_env({"MODELSERVE_INT8_MIN_LABEL_AGREEMENT": "most"})


def test_workers_default_to_one_per_cpu_the_process_may_use() -> None:
    assert Settings().workers == 0, "the default: one worker per CPU"
    assert 1 <= Settings().worker_count() <= len(os.sched_getaffinity(0))
    assert Settings(workers=3).worker_count() == 3
    with pytest.raises(ConfigError, match="WORKERS"):
        Settings.from_env({"MODELSERVE_WORKERS": "-1"})


@pytest.mark.parametrize(("resample", "refused"), [("bogus", True), ("nearest", False)])
def test_an_image_version_whose_resizing_cannot_run_is_refused_at_load(tmp_path: Path, resample: str, refused: bool) -> None:
    """resample "bogus" passed every load check, then every client's image got 400 "could not be decoded (KeyError)"."""
    source = Registry(ROOT / "models").current("image_classifier")
    target = tmp_path / "image_classifier" / "1"
    shutil.copytree(source.path, target)
    metadata = json.loads((target / METADATA_FILE).read_text())
    metadata["preprocessing"]["resample"] = resample
    (target / METADATA_FILE).write_text(json.dumps(metadata))
    version = Registry(tmp_path).get("image_classifier", 1)
    if refused:
        with pytest.raises(ModelLoadError, match="resample must be one of"):
            load_model(version, ["CPUExecutionProvider"])
    else:
        assert load_model(version, ["CPUExecutionProvider"]).assets.resample == "nearest", "the smoke check resized with it"


def test_threads_are_sized_from_the_workers_and_the_cpus_the_process_may_use() -> None:
    """A worker's pools may use every CPU the process may; a process pinned to one CPU runs one worker and single-threaded sessions."""
    from service.core.config import available_cpus
    from service.http.executor import Executor

    cpus = available_cpus()
    assert 1 <= cpus <= len(os.sched_getaffinity(0))
    for workers in (1, 2, cpus, cpus + 3):
        settings = Settings(model_root=ROOT / "models", workers=workers)
        executor = Executor(settings, ModelRuntime(settings))
        # Every CPU, whatever the worker count: the kernel hands connections to workers unevenly (all 8 of a
        # burst to one of two workers, 2 runs in 6 here), and a pool of the worker's share left a core idle then.
        assert executor.pool("imdb_sentiment")._max_workers == cpus
        executor.close()
    model = load_model(Registry(ROOT / "models").current("boston_housing"), ["CPUExecutionProvider"])
    threads = model.sessions.primary.get_session_options().intra_op_num_threads
    assert threads == (cpus if cpus > 1 else 0), "a call alone may use every CPU the process may use, no more"
    every = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(every)})  # this thread, as a process pinned to one CPU (taskset -c 0)
    try:
        pinned = load_model(Registry(ROOT / "models").current("boston_housing"), ["CPUExecutionProvider"])
        assert (Settings().worker_count(), Settings().cpus_per_worker(), pinned.sessions.narrow is None) == (1, 1, True)
    finally:
        os.sched_setaffinity(0, every)

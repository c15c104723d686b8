"""The executor and sessions behind the endpoints, on real sessions of the shipped models: batching, admission, timeouts."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from service.core.config import Settings
from service.core.errors import Overloaded
from service.core.preprocessing import decode_image
from service.core.registry import Registry
from service.core.runtime import LoadedModel, ModelRuntime, load_model
from service.core.sessions import SessionConfig, Sessions
from service.http.executor import Admission, Executor, ItemError
from tests.conftest import FIXTURES, SHIPPED_MODELS

pytestmark = pytest.mark.unit

TEXTS = [f"review {i}: {'a wonderful, moving film' if i % 2 else 'a dull and boring mess'}" for i in range(24)]


@pytest.fixture(scope="module")
def runtime() -> ModelRuntime:
    runtime = ModelRuntime(Settings(model_root=SHIPPED_MODELS, models=("imdb_sentiment", "image_classifier")))
    runtime.load_all()
    return runtime


def recording(model: LoadedModel, calls: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch) -> LoadedModel:
    """The same model, noting (which model object, how many items) for every onnxruntime call."""
    predict = model.predict

    def recorded(items: Any, **options: Any) -> list[dict[str, Any]]:
        calls.append((id(model), len(items)))
        return predict(items, **options)

    monkeypatch.setattr(model, "predict", recorded)
    return model


def test_batching_merges_requests_and_never_mixes_versions(runtime: ModelRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = dataclasses.replace(runtime.settings, batching="on", batch_max_delay_ms=20)
    executor = Executor(settings, runtime)
    calls: list[tuple[int, int]] = []
    old = recording(runtime.get("imdb_sentiment"), calls, monkeypatch)
    new = recording(runtime.load("imdb_sentiment"), calls, monkeypatch)  # a second object of the version: what a reload swaps in
    expected = old.predict(TEXTS)
    calls.clear()

    async def burst() -> list[list[dict[str, Any]]]:
        return await asyncio.gather(*(executor.predict(old if i % 2 else new, [text]) for i, text in enumerate(TEXTS)))

    answers = asyncio.run(burst())
    assert [a[0]["label"] for a in answers] == [e["label"] for e in expected]
    assert [a[0]["probability_positive"] for a in answers] == pytest.approx([e["probability_positive"] for e in expected], abs=1e-6)
    assert len(calls) < len(TEXTS), f"requests were merged: {calls}"
    assert sum(n for _, n in calls) == len(TEXTS)
    assert {model for model, _ in calls} == {id(old), id(new)}, "each version got its own calls"
    executor.close()


def test_a_bad_image_fails_its_request_with_its_position(runtime: ModelRuntime) -> None:
    executor = Executor(runtime.settings, runtime)
    model = runtime.get("image_classifier")
    cat = (FIXTURES / "cat.jpg").read_bytes()
    items = [model.task.check(data, model.assets, runtime.settings) for data in (cat, cat, cat[: len(cat) // 2])]
    with pytest.raises(ItemError) as raised:
        asyncio.run(executor.predict(model, items))
    assert raised.value.index == 2 and "truncated or corrupt" in str(raised.value)
    executor.close()


def test_a_request_that_waits_past_the_queue_timeout_is_refused(runtime: ModelRuntime) -> None:
    settings = dataclasses.replace(runtime.settings, work_threads=1, queue_timeout_ms=50)
    executor = Executor(settings, runtime)
    model = runtime.get("imdb_sentiment")

    async def blocked_then_late() -> None:
        busy = executor.run(model.name, time.sleep, 0.3)  # the only worker thread is busy for 300 ms
        with pytest.raises(Overloaded, match="waited"):
            await asyncio.gather(busy, executor.predict(model, ["a long review " * 500]))  # not light: it needs a thread

    asyncio.run(blocked_then_late())
    executor.close()


def test_admission_bounds_pending_work_but_always_admits_a_request_alone() -> None:
    admission = Admission(limit=100)
    with admission.admit(150), pytest.raises(Overloaded, match="busy"), admission.admit(1):  # alone, 150 is admitted; then 1 more is not
        pass
    with admission.admit(60), admission.admit(40):
        assert admission.pending == 100
    assert admission.pending == 0


def test_sessions_answer_alike_alone_concurrently_and_with_io_binding() -> None:
    version = Registry(SHIPPED_MODELS).current("image_classifier")
    model = load_model(version, ["CPUExecutionProvider"])
    batch = np.stack([decode_image((FIXTURES / name).read_bytes(), model.assets) for name in ("cat.jpg", "dog.jpg")])
    reference = model.infer({"image": batch})
    bound = Sessions(model.model_file.path, model.model_file.sha256, SessionConfig(("CPUExecutionProvider",), 0), io_binding=True)
    assert np.allclose(bound.run({"image": batch})[0], reference, atol=1e-6), "the io-binding path answers like the plain one"
    barrier = threading.Barrier(4)

    def concurrent(_: int) -> np.ndarray:
        barrier.wait()
        return model.infer({"image": batch})

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(concurrent, range(4)))
    assert all(np.allclose(r, reference, atol=1e-6) for r in results), "single-threaded sessions under concurrency answer alike"


def test_a_lone_image_runs_on_the_event_loop_and_concurrent_ones_in_the_pool(
    runtime: ModelRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing else in progress the thread hop is skipped; with company, work leaves the loop as before."""
    executor = Executor(runtime.settings, runtime)
    model = runtime.get("image_classifier")
    threads: list[str] = []
    predict = model.predict

    def noting_thread(items: Any, **options: Any) -> list[dict[str, Any]]:
        threads.append(threading.current_thread().name)
        return predict(items, **options)

    monkeypatch.setattr(model, "predict", noting_thread)
    cat = (FIXTURES / "cat.jpg").read_bytes()

    async def lone_then_together() -> list[Any]:
        lone = await executor.predict(model, [model.task.check(cat, model.assets, runtime.settings)])
        together = await asyncio.gather(
            *(executor.predict(model, [model.task.check(cat, model.assets, runtime.settings)]) for _ in range(3))
        )
        return [lone, *together]

    answers = asyncio.run(lone_then_together())
    assert threads[0] == "MainThread", "alone: decoded and scored on the event loop"
    assert all(name.startswith("work-image_classifier") for name in threads[2:]), f"with company, in the pool: {threads}"
    assert len({a[0]["label"] for a in answers}) == 1 and answers[0][0]["score"] == pytest.approx(answers[-1][0]["score"], abs=1e-6)
    executor.close()

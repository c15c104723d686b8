"""Where a request's work runs once it is checked: admission, worker threads, and batching where it pays.

The event loop only parses and checks requests (image headers, not pixels). Then:

- Admission: the decoding work in flight per model is bounded (image pixels, summed
  from headers); a request beyond the bound gets a fast 503 with Retry-After instead of
  a place in a queue that would stall everyone behind it.
- Work: decoding, preprocessing and CPU inference run in worker threads, one pool per
  model with a thread per CPU of the worker's share (the CPUs the process may use divided
  by the workers: with one worker per CPU, one thread; Pillow and onnxruntime release the
  GIL, so on more CPUs they run side by side), so a text request never queues behind
  image decoding. Without batching a request reaches onnxruntime after one thread hop,
  or none: work the task calls light (a short text, a few table rows: well under a
  millisecond, less than the hop itself) runs on the event loop when it is its model's
  only request, and so does bounded work (an image of at most a few megapixels) when it
  is the worker's only request: with nothing else to serve, the loop would only wait for
  the worker thread, and the hop (a queue, a wake-up on each side) is what a bare
  handler does not pay.
- Batching (GPU providers by default; MODELSERVE_BATCHING): requests are decoded in the
  pool, then merged by a per-version batcher into one onnxruntime call of up to the
  model's batch size, waiting at most MODELSERVE_BATCH_MAX_DELAY_MS for company
  (Triton's dynamic batcher). A batch never mixes versions, and a bad item has already
  failed its own request during decoding, so it can never fail a batch.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from service.core.config import Settings
from service.core.errors import InputError, Overloaded
from service.core.runtime import LoadedModel, ModelRuntime
from service.core.sessions import GPU_PROVIDERS
from service.http.drift import DriftMonitor, Sample
from service.http.metrics import Timing, metrics

log = logging.getLogger("modelserve.executor")
T = TypeVar("T")
Answers = list[dict[str, Any]]
IN_FLIGHT_BATCHES = 2  # batches one model runs at once: the next is assembled while the last computes
ROUTING_HEADER = "x-routing-key"  # requests with the same key get the same version during a canary
MAX_SHADOW_PENDING = 64  # shadow requests waiting or running per worker; beyond, a request is not shadowed (counted)


class ItemError(InputError):
    """An item failed decoding; `index` says which, so the client's error can name it (images[3])."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


class Admission:
    """Decoding work in flight for one model, bounded. Used from the event loop only, so no lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending = 0

    @contextlib.contextmanager
    def admit(self, cost: int) -> Iterator[None]:
        # Alone, a request is always admitted (the request budget already bounds it).
        if self.limit and cost and self.pending and self.pending + cost > self.limit:
            raise Overloaded(f"busy: {self.pending:,} pixels are being decoded, the limit is {self.limit:,}; retry shortly")
        self.pending += cost
        try:
            yield
        finally:
            self.pending -= cost


@dataclass
class Waiting:
    items: list[Any]
    future: asyncio.Future[Answers]
    timing: Timing
    since: float = field(default_factory=time.monotonic)


class Batcher:
    """Merges decoded items of concurrent requests into onnxruntime calls for ONE model version."""

    def __init__(self, model: LoadedModel, max_size: int, max_delay_s: float, run: Callable[..., Any]) -> None:
        self.model, self.max_size, self.max_delay_s, self.run = model, max_size, max_delay_s, run
        self.queue: deque[Waiting] = deque()
        self.wake = asyncio.Event()
        self.running = 0
        self.retired = False  # a reload replaced this version: finish what is queued, then stop
        self.task = asyncio.get_running_loop().create_task(self._loop())

    def retire(self) -> None:
        self.retired = True
        self.wake.set()

    async def submit(self, items: list[Any], timing: Timing) -> Answers:
        waiting = Waiting(items, asyncio.get_running_loop().create_future(), timing)
        self.queue.append(waiting)
        self.wake.set()
        return await waiting.future

    async def _loop(self) -> None:
        while not (self.retired and not self.queue and not self.running):
            await self.wake.wait()
            self.wake.clear()
            while self.queue and self.running < IN_FLIGHT_BATCHES:
                if sum(len(w.items) for w in self.queue) < self.max_size and self.max_delay_s:
                    await asyncio.sleep(self.max_delay_s - (time.monotonic() - self.queue[0].since))  # wait for company, bounded
                batch = self._take()
                self.running += 1
                asyncio.get_running_loop().create_task(self._compute(batch))

    def _take(self) -> list[Waiting]:
        """Whole requests up to max_size items (a larger request alone)."""
        batch = [self.queue.popleft()]
        size = len(batch[0].items)
        while self.queue and size + len(self.queue[0].items) <= self.max_size:
            size += len(self.queue[0].items)
            batch.append(self.queue.popleft())
        return batch

    async def _compute(self, batch: list[Waiting]) -> None:
        now = time.monotonic()
        for waiting in batch:
            waiting.timing.waited += now - waiting.since
        items = [item for waiting in batch for item in waiting.items]
        metrics().batch_size(self.model.name, self.model.version, len(items))
        try:
            answers = await self.run(self.model.predict, items)
        except BaseException as exc:  # a bug or a broken session: every request of the batch learns it
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(exc)
        else:
            start = 0
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_result(answers[start : start + len(waiting.items)])
                start += len(waiting.items)
        finally:
            self.running -= 1
            self.wake.set()


def stable_share(key: str) -> float:
    """A routing key's place in [0, 1), the same in every worker and across restarts."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2**64


def route(runtime: ModelRuntime, name: str, key: str | None = None) -> tuple[LoadedModel, LoadedModel | None]:
    """(the version that answers, a shadow version that also scores or None) for one request to `name`.

    Canary: the candidate answers `percent`% of the requests, chosen by the routing key when
    there is one (sticky), at random otherwise. Shadow: CURRENT answers, the candidate scores too.
    """
    current, slot = runtime.get(name), runtime.candidate(name)
    if slot is None:
        return current, None
    if slot.mode == "shadow":
        return current, slot.model
    share = stable_share(key) if key else random.random()
    return (slot.model if share * 100 < slot.percent else current), None


class Executor:
    """Runs checked requests for one worker: admission, a thread hop, batching per model version, shadows."""

    def __init__(
        self,
        settings: Settings,
        runtime: ModelRuntime,
        requests_in_flight: Callable[[], int] = lambda: 0,
        monitor: DriftMonitor | None = None,
    ) -> None:
        """`requests_in_flight`: HTTP requests of this worker between arrival and response (the request guard counts them).

        `monitor`: live drift, fed a sample of the requests (service/http/drift.py).
        """
        self.settings, self.runtime, self.monitor = settings, runtime, monitor
        self.requests_in_flight = requests_in_flight
        self.pools: dict[str, ThreadPoolExecutor] = {}
        self.admissions: dict[str, Admission] = {}
        self.in_progress: collections.Counter[str] = collections.Counter()  # requests per model, on the event loop
        self.batchers: dict[int, Batcher] = {}  # by id() of the LoadedModel: one per version object
        self.shadows: set[asyncio.Task[None]] = set()  # running shadow scorings (a reference keeps each alive)

    def batches(self, model: LoadedModel) -> bool:
        if self.settings.batching == "auto":
            return any(p in GPU_PROVIDERS for p in model.providers)
        return self.settings.batching == "on"

    async def predict(self, model: LoadedModel, items: Sequence[Any], shadow: LoadedModel | None = None) -> Answers:
        """Checked items of one request -> answers from `model`; `shadow` (a candidate) scores them too, off the response path."""
        started, timing, outcome, answers = time.monotonic(), Timing(), "error", None
        sample = self.monitor.sample(model, items) if self.monitor is not None else None  # drift: before decoding changes items
        try:
            answers = await self._predict(model, items, timing, shadow)
            outcome = "ok"
        except ItemError:
            outcome = "rejected"
            raise
        except Overloaded:
            outcome = "overloaded"
            raise
        finally:
            # Recorded after the response is written: prometheus_client's multiprocess values cost
            # ~10% of the event loop's time per request here, which need not be on the latency path.
            elapsed = time.monotonic() - started
            asyncio.get_running_loop().call_soon(self._record, model, outcome, timing, elapsed, answers, sample)
        return answers

    def _record(
        self, model: LoadedModel, outcome: str, timing: Timing, elapsed: float, answers: Answers | None, sample: Sample | None = None
    ) -> None:
        metrics().request(model.name, model.version, outcome, timing if outcome == "ok" else None, elapsed)
        if answers is not None:
            metrics().answers(model.task, model.name, model.version, answers)
            if sample is not None and self.monitor is not None:
                self.monitor.offer(sample, answers, elapsed)

    async def _predict(self, model: LoadedModel, items: Sequence[Any], timing: Timing, shadow: LoadedModel | None) -> Answers:
        task = model.task
        admission = self.admissions.setdefault(model.name, Admission(task.pending_limit(self.settings)))
        with admission.admit(task.cost(items)), self._counted(model.name):
            light = task.is_light(items)
            if shadow is None and not self.batches(model):
                if (light and self.in_progress[model.name] <= 1) or (task.fits_inline(items) and await self._alone_in_worker()):
                    return self._decode_and_predict(model, items)  # alone: the hop would cost more than it saves
                return await self.run(model.name, self._decode_and_predict, model, items, timing=timing)
            decoded = self._decode(model, items) if light else await self.run(model.name, self._decode, model, items, timing=timing)
            if self.batches(model):
                answers = await self._batcher(model).submit(decoded, timing)
            elif light:
                answers = self._predict_decoded(model, decoded)
            else:
                answers = await self.run(model.name, self._predict_decoded, model, decoded, timing=timing)
            if shadow is not None:
                self._start_shadow(shadow, decoded, answers)
            return answers

    def _start_shadow(self, candidate: LoadedModel, decoded: list[Any], served: Answers) -> None:
        """Score the request with the candidate in the background and compare; never on the response path."""
        if len(self.shadows) >= MAX_SHADOW_PENDING:
            metrics().shadow_skipped.labels(candidate.name, str(candidate.version)).inc()
            return

        async def score() -> None:
            started, outcome, answers = time.monotonic(), "error", None
            try:
                items = candidate.task.conform(decoded, candidate.assets)
                answers = await self.run(f"shadow {candidate.name}", candidate.predict, items)
                outcome = "ok"
                metrics().shadow(candidate.task, candidate.name, candidate.version, served, answers)
            except Overloaded:  # its worker threads are busy: this request goes unshadowed, counted
                outcome = "overloaded"
                metrics().shadow_skipped.labels(candidate.name, str(candidate.version)).inc()
            except Exception:  # a candidate's failure is its own: counted against its version, never the client's answer
                log.exception("shadow v%d of %s failed", candidate.version, candidate.name)
            finally:
                self._record(candidate, outcome, Timing(), time.monotonic() - started, answers)

        task = asyncio.get_running_loop().create_task(score())
        self.shadows.add(task)
        task.add_done_callback(self.shadows.discard)

    def _idle(self) -> bool:
        """Nothing but this request is in progress in this worker: no other request (arrived, or here), no shadow scoring."""
        return max(self.requests_in_flight(), sum(self.in_progress.values())) <= 1 and not self.shadows

    async def _alone_in_worker(self) -> bool:
        """`_idle`, asked again after one turn of the event loop: requests that arrived with this one have started by then.

        Without that turn, requests read in the same pass over the sockets would each find
        the worker idle and run one after another on the loop.
        """
        if not self._idle():
            return False
        await asyncio.sleep(0)
        return self._idle()

    @contextlib.contextmanager
    def _counted(self, name: str) -> Iterator[None]:
        self.in_progress[name] += 1
        try:
            yield
        finally:
            self.in_progress[name] -= 1

    def pool(self, name: str) -> ThreadPoolExecutor:
        if name not in self.pools:
            threads = self.settings.work_threads or self.settings.pool_threads()
            self.pools[name] = ThreadPoolExecutor(threads, thread_name_prefix=f"work-{name}")
        return self.pools[name]

    async def run(self, name: str, work: Callable[..., T], *args: Any, timing: Timing | None = None) -> T:
        """`work(*args)` in a worker thread of model `name`, unless the request waited past MODELSERVE_QUEUE_TIMEOUT_MS for one."""
        queued = time.monotonic()
        timeout_s = self.settings.queue_timeout_ms / 1000

        def start() -> T:
            waited = time.monotonic() - queued
            if timing is not None:
                timing.waited += waited
            if waited > timeout_s:
                raise Overloaded(f"waited {waited:.1f} s for a worker thread, over the {timeout_s:g} s limit; retry shortly")
            return work(*args)

        return await asyncio.get_running_loop().run_in_executor(self.pool(name), start)

    def _decode(self, model: LoadedModel, items: Sequence[Any]) -> list[Any]:
        decoded = []
        for index, item in enumerate(items):
            try:
                decoded.append(model.task.decode(item, model.assets, self.settings))
            except InputError as exc:
                raise ItemError(index, str(exc)) from None
        return decoded

    def _decode_and_predict(self, model: LoadedModel, items: Sequence[Any]) -> Answers:
        return self._predict_decoded(model, self._decode(model, items))

    def _predict_decoded(self, model: LoadedModel, decoded: list[Any]) -> Answers:
        metrics().batch_size(model.name, model.version, len(decoded))
        # Read when the work starts: alone, a request may use every core for its inference.
        return model.predict(decoded, alone=self.in_progress[model.name] <= 1)

    def _batcher(self, model: LoadedModel) -> Batcher:
        """The batcher of this version object. One of a version no longer served finishes what it holds, then stops."""
        batcher = self.batchers.get(id(model))
        if batcher is None or batcher.task.done():
            run = functools.partial(self.run, model.name)
            batcher = Batcher(model, self.runtime.batch_size(model), self.settings.batch_max_delay_ms / 1000, run)
            self.batchers[id(model)] = batcher
            batcher.task.add_done_callback(
                lambda _: self.batchers.pop(id(model), None) if self.batchers.get(id(model)) is batcher else None
            )
        for other in list(self.batchers.values()):
            if other.model.name == model.name and model.name in self.runtime and self.runtime.get(model.name) is not other.model:
                other.retire()
        return batcher

    def close(self) -> None:
        for pool in self.pools.values():
            pool.shutdown(wait=False, cancel_futures=True)

"""Real `bentoml serve` processes for the tests: one per configuration, shared, each started while the module before it runs.

A module declares the server it talks to at module level:

    SERVER = ServerSpec(env={"MODELSERVE_MAX_ITEMS": "16"})                   # the shipped models, read in place
    SERVER = ServerSpec(env={...}, registry=lambda root: registry_of(root, ...))  # a registry built for this module

and asks for the `server` fixture (tests/conftest.py). Modules that declare the same
settings on the shipped models share one process (they only read it). Starting a server
takes 4-5 s on a quiet 2-core machine and 13-16 s on a busy one, most of it importing and
loading models in a process of its own, so the next module's server is started in the
background as soon as a module takes its own: its start overlaps with this module's tests
instead of adding to the run. A server stops after the last module that uses it. In a run
of `pytest -n 2` the plan is the worker's own shard (tests/shards.py): the first module that
takes a server narrows it. Modules whose server needs more than a registry and settings (a
registry trained by TensorFlow) start it in their own fixture.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.launch import ROOT, Server, start_server

SHIPPED_MODELS = ROOT / "models"
AHEAD = 1  # how many of the next modules' servers start in the background (the machine has 2 cores)
START_THREADS = "server-start"  # the threads that start them (tests/tiers.py lets these start processes during unit tests)
log = logging.getLogger("tests.servers")
POOLED: list[Server] = []  # the servers started here (tests/conftest.py checks each module's share of their 5xx answers)


@dataclass(frozen=True)
class ServerSpec:
    """A server's settings (MODELSERVE_* environment) and registry: the shipped models (None), or one `registry(folder)` builds."""

    env: Mapping[str, str] = field(default_factory=dict)
    registry: Callable[[Path], Path] | None = None
    grpc: bool = False  # the Open Inference Protocol over gRPC too (Server.grpc_address)

    def key(self, module: str) -> tuple[str, bool, tuple[tuple[str, str], ...]]:
        """Modules with equal keys share a server: same settings on the shipped models; a built registry is the module's own."""
        return (module if self.registry is not None else "shipped", self.grpc, tuple(sorted(self.env.items())))


@dataclass
class Started:
    server: Future[Server]
    registry: Path
    users: set[str]  # the modules still to use it


class ServerPool:
    """The servers of one test session, keyed by ServerSpec.key, in the order the modules will run."""

    def __init__(self, plan: list[tuple[str, ServerSpec]], folder: Callable[[str], Path]) -> None:
        self.plan = plan  # (module, spec) in run order, for the modules that declare a SERVER
        self.folder = folder  # a fresh folder for a server's registry and log
        self._started: dict[tuple[str, bool, tuple[tuple[str, str], ...]], Started] = {}
        self.narrowed = False  # keep_only was called
        self._lock = threading.Lock()
        self._threads = ThreadPoolExecutor(max_workers=1 + AHEAD, thread_name_prefix=START_THREADS)

    def _spec(self, module: str) -> ServerSpec:
        return next(spec for name, spec in self.plan if name == module)

    def _begin(self, module: str, spec: ServerSpec) -> Started:
        key = spec.key(module)
        with self._lock:
            if key not in self._started:
                folder = self.folder(module)
                registry = SHIPPED_MODELS if spec.registry is None else folder / "registry"
                users = {name for name, other in self.plan if other.key(name) == key}
                future = self._threads.submit(_start, spec, registry, folder / "server.log")
                self._started[key] = Started(future, registry, users)
            return self._started[key]

    def keep_only(self, modules: set[str]) -> None:
        """Plan for these modules only (the shard this worker runs, tests/shards.py); before any server starts."""
        with self._lock:
            assert not self._started, "narrow the plan before the first server starts"
            self.plan = [(name, spec) for name, spec in self.plan if name in modules]
            self.narrowed = True

    def take(self, module: str) -> tuple[Server, Path]:
        """This module's server (started now, or waited for) and its registry; the next modules' servers begin starting."""
        started = self._begin(module, self._spec(module))
        names = [name for name, _ in self.plan]
        if module in names:
            for name, spec in self.plan[names.index(module) + 1 : names.index(module) + 1 + AHEAD]:
                self._begin(name, spec)
        return started.server.result(), started.registry

    def release(self, module: str) -> None:
        """This module is done with its server: stop it unless a later module shares it."""
        key = self._spec(module).key(module)
        with self._lock:
            started = self._started.get(key)
            if started is None:
                return
            started.users.discard(module)
            if started.users:
                return
            del self._started[key]
        _stop(started)

    def close(self) -> None:
        """Stop every server still running, those started ahead for modules that never ran (pytest -x) included."""
        with self._lock:
            left, self._started = list(self._started.values()), {}
        for started in left:
            _stop(started)
        self._threads.shutdown(wait=True)


def _start(spec: ServerSpec, registry: Path, log_path: Path) -> Server:
    if spec.registry is not None:
        registry.mkdir(parents=True)
        spec.registry(registry)
    server = start_server(registry, log_path, grpc=spec.grpc, **spec.env)
    POOLED.append(server)
    return server


def _stop(started: Started) -> None:
    try:
        started.server.result().stop()
    except Exception as exc:  # a start that failed has nothing to stop; its test already reported why
        log.info("server never started: %s", exc)

"""Shared fixtures: real `bentoml serve` processes (tests/servers.py), a client for them, the test inputs; the tiers' checks.

A module talks to a server through the `server` and `client` fixtures and says which
server with a module-level SERVER = ServerSpec(...) (settings; the shipped models unless
it builds a registry); without one it gets the shipped models with default settings.
Modules with equal specs on the shipped models share one process; each server starts
while the module before it runs. A module that needs more (a registry trained by
TensorFlow) overrides `server`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.launch import Server
from tests.servers import SHIPPED_MODELS, ServerPool, ServerSpec
from tests.tiers import (  # noqa: F401 - pytest finds the tiers' hooks here
    pytest_collection_modifyitems,
    pytest_make_collect_report,
    pytest_runtest_call,
    pytest_runtest_setup,
    pytest_runtest_teardown,
)

__all__ = ["FIXTURES", "SHIPPED_MODELS"]
pytest_plugins = ["pytester"]  # tests/test_tiers.py runs small suites through the tiers' hooks
FIXTURES = Path(__file__).parent / "fixtures"
CLIENT_TIMEOUT_S = 120
# The servers tests start run one worker unless a module asks for more (the multi-worker tests
# set 2): per-worker bounds and logs are then exact. The default (one per CPU) is what the
# container tests and the benchmarks run.
os.environ.setdefault("MODELSERVE_WORKERS", "1")
SERVER_PLAN = pytest.StashKey[list[tuple[str, ServerSpec]]]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """The modules that will use the shared `server` fixture, in the order they run (for starting servers ahead)."""
    plan: dict[str, ServerSpec] = {}
    for item in session.items:
        module = getattr(item, "module", None)
        if module is not None and "server" in getattr(item, "fixturenames", ()) and "server" not in vars(module):
            plan.setdefault(module.__name__, getattr(module, "SERVER", ServerSpec()))
    session.config.stash[SERVER_PLAN] = list(plan.items())


@pytest.fixture(scope="session")
def server_pool(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    pool = ServerPool(
        request.config.stash.get(SERVER_PLAN, []), lambda module: tmp_path_factory.mktemp(f"serve-{module.rsplit('.', 1)[-1]}")
    )
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def pooled_server(request: pytest.FixtureRequest, server_pool: ServerPool) -> Iterator[tuple[Server, Path]]:
    """This module's server and the registry it serves."""
    module = request.module.__name__
    if module not in [name for name, _ in server_pool.plan]:  # a module the plan did not foresee (its own `server` calls ours)
        server_pool.plan.append((module, getattr(request.module, "SERVER", ServerSpec())))
    yield server_pool.take(module)
    server_pool.release(module)


@pytest.fixture(scope="module")
def server(pooled_server: tuple[Server, Path]) -> Server:
    return pooled_server[0]


@pytest.fixture(scope="module")
def server_registry(pooled_server: tuple[Server, Path]) -> Path:
    """The registry this module's server serves (the module's own copy when its ServerSpec builds one)."""
    return pooled_server[1]


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT_S) as client:
        yield client

"""Shared fixtures: real `bentoml serve` processes (tests/servers.py), a client for them, the test inputs; the tiers' checks.

A module talks to a server through the `server` and `client` fixtures and says which
server with a module-level SERVER = ServerSpec(...) (settings; the shipped models unless
it builds a registry); without one it gets the shipped models with default settings.
Modules with equal specs on the shipped models share one process; each server starts
while the module before it runs. A module that needs more (a registry trained by
TensorFlow) overrides `server`.

Every server the tests start is asked what it answered; a module whose requests got a
5xx fails at its teardown, unless it is one the documentation promises (503 overloaded,
504 request timeout) or one the module provokes on purpose and names in EXPECTED_5XX
({status: why}). A shared server is asked before and after each module that uses it (the
module answers for the difference); a server a module starts itself, when it stops. So
the whole suite shows that no request got a 5xx it should not have.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from benchmarks import launch
from benchmarks.launch import Server
from tests.servers import POOLED, SHIPPED_MODELS, ServerPool, ServerSpec
from tests.shards import SHARD_OF
from tests.tiers import (  # noqa: F401 - pytest finds the tiers' hooks here
    pytest_collection_modifyitems,
    pytest_make_collect_report,
    pytest_runtest_call,
    pytest_runtest_setup,
    pytest_runtest_teardown,
)

__all__ = ["FIXTURES", "SHIPPED_MODELS"]
pytest_plugins = ["pytester", "tests.shards"]  # pytester: tests/test_tiers.py runs small suites through the tiers' hooks
FIXTURES = Path(__file__).parent / "fixtures"
CLIENT_TIMEOUT_S = 120
# The servers tests start run one worker unless a module asks for more (the multi-worker tests
# set 2): per-worker bounds and logs are then exact. So do the replicas of tests/test_replicas.py
# (deploy/replicas/compose.yaml passes MODELSERVE_WORKERS on: three replicas of two workers each
# were six model-loading processes per start on two cores). The default (one per CPU) is what
# the container tests (docker run) and the benchmarks run.
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


DOCUMENTED_5XX = {503: "overloaded, with Retry-After", 504: "request timeout"}
Answered = Counter[tuple[str, int]]


def _unexpected_5xx(request: pytest.FixtureRequest, server: Server, answered: Answered | None) -> str | None:
    """A line naming the 5xx answers in `answered` that are neither documented nor the module's EXPECTED_5XX, or None."""
    allowed = set(DOCUMENTED_5XX) | set(getattr(request.module, "EXPECTED_5XX", {}))
    unexpected = {
        f"{status} on {route}": n
        for (route, status), n in sorted((answered or {}).items())
        if status >= 500 and status not in allowed and n
    }
    return f"{server.url} (log {server.log_path}): {unexpected}" if unexpected else None


def _answered(server: Server) -> Answered | None:
    """What the server has answered so far (None: it no longer answers)."""
    if server.process.poll() is not None:
        return server.answered_at_stop
    try:
        return server.answered()
    except (httpx.HTTPError, ValueError):
        return server.answered_at_stop


@pytest.fixture(scope="module", autouse=True)
def no_unexpected_5xx(request: pytest.FixtureRequest) -> Iterator[None]:
    """After the module, fail if a server it started itself answered a 5xx that is neither documented nor expected (shared ones: `pooled_server`)."""
    first = len(launch.STARTED)
    yield
    own = [server for server in launch.STARTED[first:] if not any(server is pooled for pooled in POOLED)]
    problems = [line for server in own if (line := _unexpected_5xx(request, server, _answered(server)))]
    if problems:
        pytest.fail("servers answered a 5xx that no test expects:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture(scope="module")
def pooled_server(request: pytest.FixtureRequest, server_pool: ServerPool) -> Iterator[tuple[Server, Path]]:
    """This module's server and the registry it serves."""
    module = request.module.__name__
    shard_of = request.config.stash.get(SHARD_OF, None)
    if shard_of is not None and not server_pool.narrowed:  # this worker runs this module's shard, and only it
        server_pool.keep_only({name for name, shard in shard_of.items() if shard == shard_of[module]})
    if module not in [name for name, _ in server_pool.plan]:  # a module the plan did not foresee (its own `server` calls ours)
        server_pool.plan.append((module, getattr(request.module, "SERVER", ServerSpec())))
    server, registry = server_pool.take(module)
    before = _answered(server) or Counter()
    yield server, registry
    after = _answered(server) or Counter()
    server_pool.release(module)
    problem = _unexpected_5xx(request, server, after - before)  # what this module's requests got
    if problem:
        pytest.fail(f"servers answered a 5xx that no test expects:\n{problem}", pytrace=False)


@pytest.fixture(scope="module")
def server(pooled_server: tuple[Server, Path]) -> Server:
    return pooled_server[0]


@pytest.fixture(scope="module")
def server_registry(pooled_server: tuple[Server, Path]) -> Path:
    """The registry this module's server serves (the module's own copy when its ServerSpec builds one)."""
    return pooled_server[1]


@pytest.fixture(scope="module")
def keras() -> ModuleType:
    """Keras, imported when an e2e training test first asks (collection and the unit tier never load it)."""
    import keras

    return keras


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT_S) as client:
        yield client

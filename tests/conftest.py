"""Shared fixtures: a real `bentoml serve` on the shipped models, a client for it, the test inputs.

One server per test module. A module configures its server with module-level
SERVER_ENV (MODELSERVE_* settings, e.g. tighter limits) and MODEL_ROOT (another
registry); a module that needs more (a registry it builds itself) overrides `server`.

Every server a module starts (benchmarks.launch.start_server, whichever fixture or test
starts it) is asked what it answered when it stops; a module whose servers answered a
5xx fails at its teardown, unless it is one the README documents (503 overloaded, 504
request timeout) or one the module provokes on purpose and names in EXPECTED_5XX
({status: why}). So the whole suite shows that no request got a 5xx it should not have.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks import launch
from benchmarks.launch import ROOT, Server, start_server

FIXTURES = Path(__file__).parent / "fixtures"
SHIPPED_MODELS = ROOT / "models"
CLIENT_TIMEOUT_S = 120
# The servers tests start run one worker unless a module asks for more (the multi-worker tests
# set 2): per-worker bounds and logs are then exact. The default (one per CPU) is what the
# container tests and the benchmarks run.
os.environ.setdefault("MODELSERVE_WORKERS", "1")
DOCUMENTED_5XX = {503: "overloaded, with Retry-After", 504: "request timeout"}


@pytest.fixture(scope="module", autouse=True)
def no_unexpected_5xx(request: pytest.FixtureRequest) -> Iterator[None]:
    """After the module (its servers stopped), fail if one of them answered a 5xx that is neither documented nor expected."""
    first = len(launch.STARTED)
    yield
    allowed = set(DOCUMENTED_5XX) | set(getattr(request.module, "EXPECTED_5XX", {}))
    problems = []
    for server in launch.STARTED[first:]:
        answered = server.answered_at_stop
        if answered is None and server.process.poll() is None:
            answered = server.answered()
        unexpected = {
            f"{status} on {route}": n for (route, status), n in sorted((answered or {}).items()) if status >= 500 and status not in allowed
        }
        if unexpected:
            problems.append(f"{server.url} (log {server.log_path}): {unexpected}")
    if problems:
        pytest.fail("servers answered a 5xx that no test expects:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = getattr(request.module, "MODEL_ROOT", SHIPPED_MODELS)
    env = getattr(request.module, "SERVER_ENV", {})
    server = start_server(root, tmp_path_factory.mktemp("serve") / "server.log", **env)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT_S) as client:
        yield client

"""Shared fixtures: a real `bentoml serve` on the shipped models, a client for it, the test inputs; the tiers' checks.

One server per test module. A module configures its server with module-level
SERVER_ENV (MODELSERVE_* settings, e.g. tighter limits) and MODEL_ROOT (another
registry); a module that needs more (a registry it builds itself) overrides `server`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.launch import ROOT, Server, start_server
from tests.tiers import (  # noqa: F401 - pytest finds the tiers' hooks here
    pytest_collection_modifyitems,
    pytest_make_collect_report,
    pytest_runtest_call,
    pytest_runtest_setup,
    pytest_runtest_teardown,
)

FIXTURES = Path(__file__).parent / "fixtures"
SHIPPED_MODELS = ROOT / "models"
CLIENT_TIMEOUT_S = 120
# The servers tests start run one worker unless a module asks for more (the multi-worker tests
# set 2): per-worker bounds and logs are then exact. The default (one per CPU) is what the
# container tests and the benchmarks run.
os.environ.setdefault("MODELSERVE_WORKERS", "1")


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

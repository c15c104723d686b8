"""The test tiers, enforced: every test module says its tier once, and a unit test stays in this process.

    unit         in this process and fast: no server, no subprocess, no Spark, browser,
                 Docker or TensorFlow (onnxruntime sessions of the shipped models are fine)
    integration  a real `bentoml serve` over HTTP, or another process (the batch CLI, ruff, bentoml build)
    e2e          Spark, Chromium, Docker, replicas, TensorFlow training

`pytest -m unit` is the quick loop; plain `pytest` runs every tier, unit first, then
integration, then e2e (a fast failure shows first). A module carries its tier as a
module-level `pytestmark = pytest.mark.<tier>` (a list may add other marks). Collection
stops with a list of offenders when a test has no tier or more than one, or when
importing a unit module loads TensorFlow, Keras, PySpark or Selenium. While a unit test
runs (its fixtures included), starting a process or listening on a socket raises, and the
test fails even if the code under test swallowed the exception; only the threads of
tests/servers.py, which start the first integration server while the unit tests run, may.
"""

from __future__ import annotations

import _posixsubprocess
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.servers import START_THREADS

TIERS = ("unit", "integration", "e2e")
HEAVY_MODULES = ("tensorflow", "keras", "pyspark", "selenium")  # none of them may be imported by a unit test
_heavy_imports: dict[str, list[str]] = {}  # test module path -> heavy modules its import brought in


class TierViolation(Exception):
    """A unit test did what only integration and e2e tests may do."""


def _loaded_heavy() -> set[str]:
    return {name for name in HEAVY_MODULES if name in sys.modules}


def _module_tiers(module: Any) -> list[str]:
    marks = getattr(module, "pytestmark", [])
    marks = marks if isinstance(marks, list) else [marks]
    return [m.name for m in marks if getattr(m, "name", None) in TIERS]


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[Any]:
    """Note which heavy modules importing a test module brought in (a unit module may bring in none)."""
    before = _loaded_heavy() if isinstance(collector, pytest.Module) else set()
    report = yield
    if isinstance(collector, pytest.Module):
        new = _loaded_heavy() - before
        if new:
            _heavy_imports[collector.nodeid] = sorted(new)
    return report


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects anything: every collected test is checked
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problems: dict[str, str] = {}
    for item in items:
        module = getattr(item, "module", None)
        where = item.nodeid.split("::")[0]
        declared = _module_tiers(module)
        found = sorted({m.name for m in item.iter_markers() if m.name in TIERS})
        if len(declared) != 1:
            problems[where] = f"has {declared or 'no tier'} in its module-level pytestmark; give it exactly one of {', '.join(TIERS)}"
        elif found != declared:
            problems[item.nodeid] = f"has tiers {found}; a module's tests share its tier ({declared[0]})"
        elif declared == ["unit"] and where in _heavy_imports:
            problems[where] = f"is a unit module but importing it loads {_heavy_imports[where]}; import them in the tests of a higher tier"
    if problems:
        lines = "\n".join(f"  {where}: {problem}" for where, problem in sorted(problems.items()))
        raise pytest.UsageError(f"test tiers (tests/tiers.py):\n{lines}")
    items.sort(key=lambda item: TIERS.index(_module_tiers(item.module)[0]))  # stable: modules stay whole, in file order


@contextmanager
def _in_process_only(item: pytest.Item) -> Iterator[None]:
    """For a unit test: refuse new processes and listening sockets; fail if a heavy module got imported."""
    if item.get_closest_marker("unit") is None:
        yield
        return
    violations: list[str] = []

    def refuse(what: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def refused(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread().name.startswith(START_THREADS):  # tests/servers.py starting the next server ahead
                return original(*args, **kwargs)
            message = f"{item.nodeid} is a unit test and {what}; mark its module integration or e2e (tests/tiers.py)"
            violations.append(message)
            raise TierViolation(message)

        return refused

    guarded = [
        (subprocess, "_fork_exec"),  # subprocess.Popen
        (_posixsubprocess, "fork_exec"),  # multiprocessing's spawn and forkserver
        (os, "fork"),
        (os, "posix_spawn"),
        (os, "posix_spawnp"),
        (socket.socket, "listen"),  # every server, asyncio's and uvicorn's among them
    ]
    saved = [(owner, name, vars(owner).get(name)) for owner, name in guarded]  # None: inherited (socket.socket.listen)
    heavy_before = _loaded_heavy()
    for owner, name in guarded:
        what = "starts a server (listens on a socket)" if name == "listen" else "starts a process"
        setattr(owner, name, refuse(what, getattr(owner, name)))
    try:
        yield
    finally:
        for owner, name, original in saved:
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
    new = _loaded_heavy() - heavy_before
    if new:
        violations.append(f"{item.nodeid} is a unit test and imported {sorted(new)}")
    if violations:
        raise TierViolation("; ".join(dict.fromkeys(violations)))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _in_process_only(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _in_process_only(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    with _in_process_only(item):
        return (yield)

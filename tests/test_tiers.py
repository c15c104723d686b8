"""The tiers' checks (tests/tiers.py) on small suites run in this process by pytester: what they refuse, and why."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit

CONFTEST = """
from tests.tiers import (
    pytest_collection_modifyitems, pytest_make_collect_report, pytest_runtest_call, pytest_runtest_setup, pytest_runtest_teardown,
)
"""
MARKERS = "[pytest]\nmarkers =\n    unit: u\n    integration: i\n    e2e: e\n"


@pytest.fixture()
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makeini(MARKERS)
    return pytester


def test_a_module_without_a_tier_stops_collection(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_untiered="def test_a():\n    pass\n")
    result = suite.runpytest_inprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_untiered.py: has no tier in its module-level pytestmark*"])


def test_a_test_with_a_second_tier_stops_collection(suite: pytest.Pytester) -> None:
    source = "import pytest\npytestmark = pytest.mark.unit\n\n@pytest.mark.e2e\ndef test_a():\n    pass\n"
    suite.makepyfile(test_two=source)
    result = suite.runpytest_inprocess("-m", "unit")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_two.py::test_a: has tiers ?'e2e', 'unit'?; a module's tests share its tier (unit)"])


def test_a_unit_test_that_starts_a_process_or_a_server_fails(suite: pytest.Pytester) -> None:
    source = """
import socket, subprocess
import pytest
pytestmark = pytest.mark.unit

def test_process_even_if_swallowed():
    try:
        subprocess.run(["true"])
    except Exception:
        pass

def test_server():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()

def test_a_client_socket_is_fine():
    socket.socket().close()
"""
    suite.makepyfile(test_unit=source)
    result = suite.runpytest_inprocess()
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["*test_process_even_if_swallowed is a unit test and starts a process*"])
    result.stdout.fnmatch_lines(["*test_server is a unit test and starts a server (listens on a socket)*"])


def test_tiers_run_unit_first(suite: pytest.Pytester) -> None:
    for name, tier in (("test_a_e2e", "e2e"), ("test_b_integration", "integration"), ("test_c_unit", "unit")):
        suite.makepyfile(**{name: f"import pytest\npytestmark = pytest.mark.{tier}\n\ndef test_it():\n    pass\n"})
    result = suite.runpytest_inprocess("-v")
    result.stdout.fnmatch_lines(
        ["*test_c_unit.py::test_it PASSED*", "*test_b_integration.py::test_it PASSED*", "*test_a_e2e.py::test_it PASSED*"]
    )

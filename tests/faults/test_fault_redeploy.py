"""Interrupted redeploys: the reload step fails in unexpected ways, or is stopped by a signal; CURRENT must go back.

Defect 3: a 502 with an HTML body, /models answering 500, or Ctrl-C while waiting left
CURRENT on the new, unchecked version, and every running service followed it. Here
the redeploy's reload step (`training.redeploy.deploy`, what runs after training,
export, gate and promotion) talks to a real `bentoml serve` that follows CURRENT, or
to a small real HTTP server standing in for a proxy or a broken service in front of
it. Training itself is covered end to end by tests/test_redeploy.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from benchmarks.launch import ROOT, Server, free_port
from service.core.errors import DeployError
from service.core.registry import HISTORY_FILE, Registry
from tests.faults.faultlib import TABULAR, TOKEN, copy_version, registry_of, versions_answering, wait_until
from tests.servers import ServerSpec
from training.redeploy import ServiceClient, deploy

pytestmark = pytest.mark.integration


class FaultyService(BaseHTTPRequestHandler):
    """Answers as a broken service or proxy would, per `mode`: '502', 'models-500', 'hang', 'garbage-200'."""

    mode = "502"
    reload_seen = threading.Event()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        FaultyService.reload_seen.set()
        if self.mode == "502":
            self._answer(502, b"<html><body><h1>502 Bad Gateway</h1>nginx</body></html>", "text/html")
        elif self.mode == "hang":
            time.sleep(60)
        elif self.mode == "garbage-200":
            self._answer(200, b'{"results": "reloaded"}', "application/json")
        else:
            self._answer(200, b'{"results": [{"model": "boston_housing", "status": "reloaded", "version": 2}]}', "application/json")

    def do_GET(self) -> None:
        self._answer(500, b"Internal Server Error", "text/plain")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def faulty() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), FaultyService)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


# A real service on the same registry, following CURRENT every second, as production would.
SERVER = ServerSpec(env={"MODELSERVE_RELOAD_POLL_S": "1"}, registry=lambda root: registry_of(root, TABULAR))


@pytest.fixture(scope="module")
def root(server_registry: Path) -> Path:
    return server_registry


def promoted_copy(root: Path) -> int:
    version = copy_version(root, TABULAR, 1)
    Registry(root).promote(TABULAR, version)
    return version


@pytest.mark.parametrize(
    ("mode", "words"),
    [
        ("502", "answered 502 with a body that is not JSON: '<html><body><h1>502 Bad Gateway</h1>nginx</body></html>'"),
        ("models-500", "answered 500 with a body that is not JSON: 'Internal Server Error'"),
        ("garbage-200", "service refused the reload (200)"),
    ],
)
def test_an_unexpected_answer_puts_current_back(faulty: str, server: Server, root: Path, mode: str, words: str) -> None:
    FaultyService.mode = mode
    new = promoted_copy(root)
    with pytest.raises(DeployError) as caught:
        deploy(Registry(root), ServiceClient(faulty, TOKEN), TABULAR, new, 1, [])
    message = str(caught.value)
    assert words in message and "CURRENT is back on v1" in message, message
    assert Registry(root).current_version(TABULAR) == 1
    assert (root / TABULAR / HISTORY_FILE).read_text().splitlines()[-1].endswith(f"rollback {new} 1")
    # The real service, which may have followed CURRENT to the new version meanwhile, is back on v1.
    wait_until(lambda: versions_answering(server.url, 4) == {1: 4}, timeout=30, every=0.5)


def test_an_unreachable_service_puts_current_back(root: Path) -> None:
    new = promoted_copy(root)
    with pytest.raises(DeployError, match=r"no answer .*; CURRENT is back on v1, the service did not confirm"):
        deploy(Registry(root), ServiceClient(f"http://127.0.0.1:{free_port()}", TOKEN), TABULAR, new, 1, [])
    assert Registry(root).current_version(TABULAR) == 1


SCRIPT = """
import sys
from service.core.errors import run_cli
from service.core.registry import Registry
from training.redeploy import ServiceClient, deploy
registry = Registry(sys.argv[1])
registry.promote("boston_housing", int(sys.argv[3]))
print("promoted", flush=True)
sys.exit(run_cli(lambda: deploy(registry, ServiceClient(sys.argv[2], "token"), "boston_housing", int(sys.argv[3]), 1, []) or 0))
"""


@pytest.mark.parametrize(
    ("signum", "name", "inherited"),
    [
        (signal.SIGINT, "SIGINT", signal.SIG_DFL),  # Ctrl-C in a terminal
        (signal.SIGINT, "SIGINT", signal.SIG_IGN),  # started by a script's `cmd &`: SIGINT arrives ignored
        (signal.SIGTERM, "SIGTERM", signal.SIG_DFL),  # a CI runner stopping the job
    ],
    ids=["SIGINT", "SIGINT-in-background", "SIGTERM"],
)
def test_a_signal_while_waiting_for_the_service_puts_current_back(
    faulty: str, server: Server, root: Path, signum: int, name: str, inherited: signal.Handlers
) -> None:
    """A signal while the service reloads: CURRENT back, exit 130, one line.

    The redeploy starts with SIGINT as given (`inherited`), not as pytest's own: a suite run
    from a script in the background hands every child SIGINT ignored, which is how this test
    once timed out on another host (no KeyboardInterrupt, so the redeploy waited out the hang).
    Waits are deadlines polled for, generous for a loaded machine.
    """
    FaultyService.mode = "hang"
    FaultyService.reload_seen.clear()
    new = copy_version(root, TABULAR, 1)
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    job = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(root), faulty, str(new)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, inherited),
    )
    assert FaultyService.reload_seen.wait(120), "the redeploy never called the service"
    assert Registry(root).current_version(TABULAR) == new
    FaultyService.mode = "502"  # the restore's own reload call gets an answer
    job.send_signal(signum)
    # Unheard, the signal would leave the redeploy waiting out the hang (60 s) and ending with exit 1: a clear failure below.
    _, err = job.communicate(timeout=300)
    assert job.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: interrupted ({name}) while the service reloaded; CURRENT is back on v1"), err
    assert Registry(root).current_version(TABULAR) == 1
    wait_until(lambda: versions_answering(server.url, 4) == {1: 4}, timeout=120, every=0.5)

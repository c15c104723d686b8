"""Start a real `bentoml serve` process on a free port and wait until /readyz says ready.

Used by the benchmarks and by the tests (tests/conftest.py): both talk to the service
exactly as a user's client does, over HTTP (and gRPC, when asked) to a separate process.
Each server's own count of the requests it answered, by route and status (BentoML's counter
on /metrics, over every worker and every route), is read when it is stopped: the tests fail
a module whose servers answered a 5xx they did not expect (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
BENTOML = Path(sys.executable).with_name("bentoml")
READY_TIMEOUT_S = 120
ANSWERED_METRIC = "bentoml_service_request_total"  # BentoML counts every answered request by endpoint and status


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    answered_at_stop: Counter[tuple[str, int]] | None = None  # (route, status) -> requests, read by stop() (None: not read)
    grpc_address: str | None = None  # host:port of the Open Inference Protocol over gRPC, when started with grpc=True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def answered(self) -> Counter[tuple[str, int]]:
        """The requests this server has answered so far, by route and status, from its own /metrics."""
        counts: Counter[tuple[str, int]] = Counter()
        for family in text_string_to_metric_families(httpx.get(f"{self.url}/metrics", timeout=10).text):
            for sample in family.samples:
                code = sample.labels.get("http_response_code", "")
                if sample.name == ANSWERED_METRIC and code.isdigit() and sample.value:
                    counts[(sample.labels.get("endpoint", "?"), int(code))] += int(sample.value)
        return counts

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            with contextlib.suppress(httpx.HTTPError, ValueError):  # a server that no longer answers has nothing to tell
                self.answered_at_stop = self.answered()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_process(
    command: list[str], url: str, log_path: Path, *, cwd: Path = ROOT, env: dict[str, str] | None = None, ready: str = "/readyz"
) -> Server:
    """Start a server process and wait until GET `url + ready` answers 200 (its output goes to `log_path`)."""
    handle = open(log_path, "wb")  # noqa: SIM115 - the server writes to it until it stops
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(process, url, log_path)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command[0]} exited with {process.returncode}:\n{server.log()[-3000:]}")
        try:
            if httpx.get(f"{url}{ready}", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"{' '.join(command)} not ready after {READY_TIMEOUT_S}s:\n{server.log()[-3000:]}")


def start_server(model_root: Path, log_path: Path, *, project: Path = ROOT, grpc: bool = False, **env: str) -> Server:
    """`bentoml serve` of `project` (default: this checkout) on `model_root`; MODELSERVE_* settings as keyword arguments.

    grpc=True: the Open Inference Protocol over gRPC too, on another free port (Server.grpc_address).
    """
    port = free_port()
    environ = os.environ | {"MODELSERVE_MODEL_ROOT": str(model_root), "BENTOML_HOME": str(log_path.parent / "bentoml_home")} | env
    grpc_address = None
    if grpc:
        grpc_port = free_port()
        environ |= {"MODELSERVE_GRPC_PORT": str(grpc_port), "MODELSERVE_GRPC_HOST": "127.0.0.1"}
        grpc_address = f"127.0.0.1:{grpc_port}"
    if project != ROOT:  # another checkout (benchmarks/commits.py): its code, not this one's
        environ["PYTHONPATH"] = str(project)
    command = [str(BENTOML), "serve", ".", "--host", "127.0.0.1", "--port", str(port)]
    server = start_process(command, f"http://127.0.0.1:{port}", log_path, cwd=project, env=environ)
    server.grpc_address = grpc_address  # listening: a worker starts its gRPC server before it answers /readyz
    STARTED.append(server)
    return server


STARTED: list[Server] = []  # every `bentoml serve` this process started, for the tests' check of what they answered

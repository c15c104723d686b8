"""Start a real `bentoml serve` process on a free port and wait until /readyz says ready."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BENTOML = Path(sys.executable).with_name("bentoml")
READY_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(model_root: Path, log_path: Path, **env: str) -> Server:
    port = free_port()
    environ = os.environ | {"MODELSERVE_MODEL_ROOT": str(model_root), "BENTOML_HOME": str(log_path.parent / "bentoml_home")} | env
    handle = open(log_path, "wb")
    process = subprocess.Popen(
        [str(BENTOML), "serve", ".", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=environ, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {process.returncode}:\n{server.log()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"bentoml serve not ready after {READY_TIMEOUT_S}s:\n{server.log()[-3000:]}")

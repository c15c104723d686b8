"""What the fault-injection tests share: registries to damage, load to run while breaking things, raw sockets, worker processes.

Everything here is real: registries are copies of the shipped models on disk, servers
are `bentoml serve` processes (benchmarks.launch), load is HTTP from threads, faults
are signals, files and bytes on a socket.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.launch import ROOT, Server
from service.core.registry import CURRENT_FILE, METADATA_FILE, Registry

SHIPPED = ROOT / "models"
TABULAR = "boston_housing"  # the fastest model to load: registry faults are injected into it
HOUSE = [0.06, 0.0, 2.46, 0.0, 0.488, 7.8, 53.6, 3.2, 3.0, 193.0, 17.8, 392.6, 3.0]
TOKEN = "fault-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def registry_of(root: Path, *names: str) -> Path:
    """A registry at `root` holding the shipped CURRENT version of each model in `names`, as v1."""
    shipped = Registry(SHIPPED)
    for name in names:
        version = shipped.current_version(name)
        shutil.copytree(SHIPPED / name / str(version), root / name / "1")
        metadata = json.loads((root / name / "1" / METADATA_FILE).read_text())
        metadata["version"] = 1
        (root / name / "1" / METADATA_FILE).write_text(json.dumps(metadata))
        (root / name / CURRENT_FILE).write_text("1\n")
    return root


def copy_version(root: Path, name: str, source: int = 1, mutate: Callable[[Path], None] | None = None) -> int:
    """A new version directory copied from `source`, then changed by `mutate(path)` (damage on purpose)."""
    target = max(Registry(root).versions(name)) + 1
    path = root / name / str(target)
    shutil.copytree(root / name / str(source), path)
    metadata = json.loads((path / METADATA_FILE).read_text())
    metadata["version"] = target
    (path / METADATA_FILE).write_text(json.dumps(metadata))
    if mutate is not None:
        mutate(path)
    return target


# No kept-alive connections: every request opens its own, so that it may reach any worker.
FRESH_CONNECTIONS = httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0))


def predict_price(url: str) -> tuple[int, int | None]:
    """(status, version that answered) of one /predict_price on a new connection."""
    response = FRESH_CONNECTIONS.post(f"{url}/predict_price", json={"rows": [HOUSE]})
    version = response.json()[0]["version"] if response.status_code == 200 else None
    return response.status_code, version


def versions_answering(url: str, requests: int = 40) -> Counter[int | None]:
    return Counter(predict_price(url)[1] for _ in range(requests))


def worker_pids(server: Server) -> list[int]:
    """The BentoML worker processes under a `bentoml serve`."""
    pids = []
    for child in psutil.Process(server.process.pid).children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "_bentoml_impl.worker" in " ".join(child.cmdline()):
                pids.append(child.pid)
        except psutil.Error:  # gone, or a zombie until the arbiter reaps it
            continue
    return sorted(pids)


def wait_until(condition: Callable[[], bool], timeout: float, every: float = 0.1) -> float:
    """Seconds until `condition()` held; AssertionError at the timeout."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s")
        time.sleep(every)
    return time.monotonic() - started


@dataclass
class Outcome:
    at: float  # seconds since the load started, when the answer (or the error) came
    sent: float  # seconds since the load started, when the request was sent
    status: int | None  # None: no HTTP answer (connection refused or reset)
    version: int | None
    error: str = ""


@dataclass
class Load:
    """Clients posting /predict_price in a loop (a new connection each time) until stopped; every outcome recorded."""

    url: str
    clients: int = 4
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    started: float = 0.0

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _client(self) -> None:
        while not self._stop.is_set():
            sent = time.monotonic() - self.started
            try:
                status, version = predict_price(self.url)
                self.outcomes.append(Outcome(time.monotonic() - self.started, sent, status, version))
            except httpx.HTTPError as exc:
                self.outcomes.append(Outcome(time.monotonic() - self.started, sent, None, None, type(exc).__name__))
                time.sleep(0.05)

    def recovery_after(self, moment: float) -> float:
        """Seconds from `moment` until the first request sent after it was answered 200 (inf if none)."""
        answered = [o.at for o in self.outcomes if o.sent >= moment and o.status == 200]
        return min(answered) - moment if answered else float("inf")

    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]

    def statuses(self) -> Counter[int | None]:
        return Counter(o.status for o in self.outcomes)


@dataclass
class RawAnswer:
    status: int | None  # None: the connection closed without an answer
    head: str
    body: bytes
    seconds: float  # from the first byte sent until the answer (or the close)
    closed: bool  # the server closed the connection after answering

    def json(self) -> Any:
        return json.loads(self.body)


def raw_exchange(port: int, head: bytes, chunks: list[bytes] | None = None, pause_s: float = 0.0, timeout: float = 30) -> RawAnswer:
    """Send `head`, then `chunks` with `pause_s` between them (stopping if the server closes), and read one answer."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(head)
            for chunk in chunks or []:
                if pause_s:
                    time.sleep(pause_s)
                sock.sendall(chunk)
        except OSError:
            pass  # the server answered and closed early: read what it said
        data = read_answer(sock)
        closed = _closed_after(sock)
    seconds = time.monotonic() - started
    if not data:
        return RawAnswer(None, "", b"", seconds, True)
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    status = int(head_bytes.split(b" ", 2)[1])
    return RawAnswer(status, head_bytes.decode("latin-1"), body, seconds, closed)


def read_answer(sock: socket.socket) -> bytes:
    """One HTTP answer read from `sock` (b\"\": the connection closed without one)."""
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                length = next(
                    (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), None
                )
                if length is not None and len(body) >= length:
                    return data
    except (ConnectionResetError, TimeoutError):
        return data


def _closed_after(sock: socket.socket) -> bool:
    sock.settimeout(1.0)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def slow_send(port: int, data: bytes, every_s: float, timeout: float) -> RawAnswer:
    """Send `data` one byte every `every_s` seconds (a slow-loris client) until the server answers or closes."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.settimeout(every_s)
        received = b""
        for byte in data:
            try:
                sock.sendall(bytes([byte]))
                chunk = sock.recv(65536)
                received += chunk
                if not chunk or b"\r\n\r\n" in received:
                    break
            except TimeoutError:
                continue
            except OSError:
                break
            if time.monotonic() - started > timeout:
                break
    seconds = time.monotonic() - started
    status = int(received.split(b" ", 2)[1]) if received.startswith(b"HTTP/") else None
    return RawAnswer(status, received.partition(b"\r\n\r\n")[0].decode("latin-1"), received.partition(b"\r\n\r\n")[2], seconds, True)


def log_problems(server: Server) -> list[str]:
    """Lines of the server's log that show a server-side failure (an error, a traceback, a dead thread)."""
    markers = ("[ERROR]", " ERROR ", "Traceback", "Exception in thread")
    return [line for line in server.log().splitlines() if any(m in line for m in markers)]

"""The worker processes of one `bentoml serve`, coordinated through a directory of small files they share.

An HTTP call reaches one worker process. POST /admin/reload answered "reloaded"
while, with two workers and CURRENT polling off, the other worker kept the old
version for good (4,001 answers from v2, 5,303 from v1, measured). So the worker
that takes the call reloads, then asks its peers to reload by writing a request
file, and waits until each live peer confirms with the versions it now serves.
Every worker also publishes what it serves and what it refused, so GET /models shows
every worker's versions whichever worker answers it.

Files live in `<tempdir>/modelserve-workers/<arbiter pid>-<arbiter start time>/`:
the workers of one server share their parent (BentoML's arbiter); another server on
the same machine has another parent. `worker-<pid>.json` is one worker's state,
`request.json` the latest reload request. Every write is atomic (files.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from service.core.files import atomic_write_text

CONTROL_DIR = "modelserve-workers"
REQUEST_FILE = "request.json"
STATUS_PREFIX = "worker-"
WAIT_POLL_S = 0.1  # how often a waiting worker looks at its peers' files
log = logging.getLogger("modelserve.workers")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # gone, or being replaced: the next look sees it
    return value if isinstance(value, dict) else None


def _is_sibling(pid: int) -> bool:
    """A live process with the same parent as this one (another worker of this server)."""
    try:
        return pid != os.getpid() and psutil.Process(pid).ppid() == os.getppid()
    except (psutil.Error, OSError):
        return False


class WorkerGroup:
    """This worker's view of its server's workers: publish own state, ask peers to reload, wait for them."""

    def __init__(self, expected: int, directory: Path | None = None) -> None:
        self.expected = expected  # MODELSERVE_WORKERS
        self.pid = os.getpid()
        self.directory = directory or self.default_directory()
        self.directory.mkdir(parents=True, exist_ok=True)
        # The newest reload request this worker has carried out. A worker that starts (or restarts after a
        # crash) loads CURRENT after any request made so far: it counts as having carried them out.
        request = _read_json(self.directory / REQUEST_FILE) or {}
        self.handled = request["generation"] if isinstance(request.get("generation"), int) else 0
        self._lock = threading.Lock()

    @staticmethod
    def default_directory() -> Path:
        """One directory per running server; directories of servers that are gone are removed."""
        parent = psutil.Process(os.getppid())
        root = Path(tempfile.gettempdir()) / CONTROL_DIR
        mine = root / f"{parent.pid}-{int(parent.create_time())}"
        if root.is_dir():
            for other in root.iterdir():
                pid = other.name.partition("-")[0]
                if other != mine and pid.isascii() and pid.isdigit() and not psutil.pid_exists(int(pid)):
                    shutil.rmtree(other, ignore_errors=True)
        return mine

    @property
    def status_path(self) -> Path:
        return self.directory / f"{STATUS_PREFIX}{self.pid}.json"

    def publish(self, served: dict[str, int], refused: dict[str, Any], candidates: dict[str, Any] | None = None) -> None:
        """Write this worker's state: what it serves (and beside it), what it refused, the newest request it carried out."""
        with self._lock:
            state = {"pid": self.pid, "generation": self.handled, "served": served, "refused": refused, "at": time.time()}
            state["candidates"] = candidates or {}
            atomic_write_text(self.status_path, json.dumps(state))

    def request_reload(self, models: list[str]) -> int:
        """Ask every other worker to reload `models` from CURRENT; return the request's generation."""
        generation = time.time_ns()
        atomic_write_text(self.directory / REQUEST_FILE, json.dumps({"generation": generation, "models": models, "by": self.pid}))
        self.handled = max(self.handled, generation)
        return generation

    def pending_request(self) -> dict[str, Any] | None:
        """The newest reload request from another worker that this one has not carried out yet."""
        request = _read_json(self.directory / REQUEST_FILE)
        if not request or not isinstance(request.get("generation"), int) or request["generation"] <= self.handled:
            return None
        if request.get("by") == self.pid:
            self.handled = request["generation"]
            return None
        return request

    def peers(self) -> list[dict[str, Any]]:
        """The published states of the other live workers (a dead worker's file is removed)."""
        states = []
        for path in sorted(self.directory.glob(f"{STATUS_PREFIX}*.json")):
            state = _read_json(path)
            if state is None or state.get("pid") == self.pid:
                continue
            if not isinstance(state.get("pid"), int) or not _is_sibling(state["pid"]):
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            states.append(state)
        return states

    def last_served(self) -> dict[str, int]:
        """The versions this server's workers, live or dead, published last (a restarting worker's fallback)."""
        served: dict[str, tuple[float, int]] = {}
        for path in self.directory.glob(f"{STATUS_PREFIX}*.json"):
            state = _read_json(path) or {}
            at = state.get("at") if isinstance(state.get("at"), float | int) else 0.0
            for name, version in (state.get("served") or {}).items():
                if isinstance(version, int) and (name not in served or served[name][0] < at):
                    served[name] = (at, version)
        return {name: version for name, (_, version) in served.items()}

    def everyone(self) -> list[dict[str, Any]]:
        """Every live worker's published state, this one's included (for GET /models)."""
        own = _read_json(self.status_path)
        return sorted(([own] if own else []) + self.peers(), key=lambda s: s["pid"])

    def wait_for(self, generation: int, timeout_s: float) -> tuple[list[dict[str, Any]], int]:
        """Peers' states once each has carried out request `generation`, or at the timeout; and how many never confirmed."""
        deadline = time.monotonic() + timeout_s
        while True:
            peers = self.peers()
            confirmed = [p for p in peers if isinstance(p.get("generation"), int) and p["generation"] >= generation]
            missing = max(self.expected - 1 - len(confirmed), 0)
            if not missing or time.monotonic() >= deadline:
                return confirmed, missing
            time.sleep(WAIT_POLL_S)

    def write_shared(self, prefix: str, document: dict[str, Any]) -> None:
        """Publish a document of this worker's under `<prefix><pid>.json` for the others to read (drift counts)."""
        atomic_write_text(self.directory / f"{prefix}{self.pid}.json", json.dumps(document))

    def read_shared(self, prefix: str) -> list[dict[str, Any]]:
        """The documents the other live workers published under `prefix` (a dead worker's file is removed)."""
        documents = []
        for path in sorted(self.directory.glob(f"{prefix}*.json")):
            pid = path.stem.removeprefix(prefix)
            if not (pid.isascii() and pid.isdigit()) or int(pid) == self.pid:
                continue
            if not _is_sibling(int(pid)):
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            document = _read_json(path)
            if document is not None:
                documents.append(document)
        return documents

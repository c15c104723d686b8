"""A batch job's resumable state: `.OUTPUT.batch/` beside the output, with part files and state.json.

Results are committed in chunks: a Parquet part file made durable, then the state
file (atomic rename) recording how many inputs are done and with which arguments. A
job stopped any way at all restarts from the last commit; a changed input, argument
or model version is refused rather than mixed in.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from service.core.errors import UsageError
from service.core.files import atomic_write_text

STATE_VERSION = 1
STATE_FILE = "state.json"
LOCK_FILE = "lock"
PART_NAME = "part-{:06d}.parquet"
ERRORS_PART_NAME = "errors-{:06d}.parquet"


@dataclass
class State:
    """What is committed: inputs [0, position) are in part files 0 .. parts-1, each exactly once."""

    fingerprint: dict[str, Any]
    parts: int = 0
    position: int = 0
    scored: int = 0
    failed: int = 0
    complete: bool = False

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1) + "\n"


class WorkDir:
    """`.OUTPUT.batch/` beside the output: part files, state.json and a lock against a second job."""

    def __init__(self, output: Path) -> None:
        self.path = output.parent / f".{output.name}.batch"
        self._lock: TextIO | None = None
        self._owned = False  # this job created or locked the folder (another job's folder is never removed)

    @property
    def state_path(self) -> Path:
        return self.path / STATE_FILE

    def part(self, index: int) -> Path:
        return self.path / PART_NAME.format(index)

    def errors_part(self, index: int) -> Path:
        return self.path / ERRORS_PART_NAME.format(index)

    def lock(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.path / LOCK_FILE, "w")  # noqa: SIM115 - held for the job's lifetime, closed by release()
        except OSError as exc:  # a read-only or full output folder: one line, exit 2, not a traceback
            raise UsageError(f"cannot write the job's work folder {self.path} beside OUTPUT ({exc.strerror or exc})") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"another batch job is writing {self.path.parent} (lock held on {self.path / LOCK_FILE})") from None
        self._owned = True

    def load(self) -> State | None:
        try:
            return State(**json.loads(self.state_path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise UsageError(f"{self.state_path} is unreadable ({exc}); pass --restart to start over") from None

    def save(self, state: State) -> None:
        """Atomic: a reader sees the old state or the new one, never half of one."""
        atomic_write_text(self.state_path, state.to_json(), sync_dir=True)

    def clear(self) -> None:
        """Forget all progress (keeps the lock file, which this job holds)."""
        for path in self.path.iterdir():
            if path.name != LOCK_FILE:
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    def discard_uncommitted(self, parts: int) -> None:
        """Remove part files written after the last commit (a job stopped between part and state)."""
        for path in self.path.iterdir():
            if path.name.endswith(".tmp") or (path.suffix == ".parquet" and int(path.stem.rpartition("-")[2]) >= parts):
                path.unlink()

    def remove(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        shutil.rmtree(self.path, ignore_errors=True)

    def release(self) -> None:
        """Let go of the lock; a folder with nothing to resume (a refused run's) is removed, not left behind."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        if self._owned and not self.state_path.exists():
            shutil.rmtree(self.path, ignore_errors=True)


def _differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            out += _differences(old, new, f"{prefix}{key}.")
        elif old != new:
            out.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return out


def open_state(output: Path, fingerprint: dict[str, Any], work: WorkDir, restart: bool) -> State:
    """Resume the saved state when it matches this job; refuse when it does not (unless restarting)."""
    work.lock()
    if restart:
        work.clear()
    saved = work.load()
    if saved is None:
        if output.exists() and not restart:
            raise UsageError(f"{output} exists; pass --overwrite to replace it")
        state = State(fingerprint)
        work.discard_uncommitted(0)
        work.save(state)
        return state
    changes = _differences(saved.fingerprint, fingerprint)
    if changes:
        raise UsageError(
            f"saved progress in {work.path} ({saved.position:,} inputs done) was made with other arguments, input or model: "
            + "; ".join(changes)
            + ". Rerun the original command to resume, or pass --restart to start over."
        )
    work.discard_uncommitted(saved.parts)
    return saved

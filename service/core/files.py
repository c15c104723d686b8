"""Durable file replacement: a reader sees the old file or the new one, never half of one.

The registry's CURRENT pointer, a batch job's state and its part files all need the
same three steps (write a temporary file beside the target, fsync, rename over it);
they live here once.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_with(path: Path, write: Callable[[Path], None], mode: int = 0o644) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, fsync it, then rename it over `path`.

    `mode`: mkstemp makes files 0600, but a service running as another user (the
    container) must be able to read what the registry and jobs write.
    """
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_text(path: Path, text: str, *, sync_dir: bool = False) -> None:
    replace_with(path, lambda tmp: tmp.write_text(text))
    if sync_dir:
        fsync_dir(path.parent)

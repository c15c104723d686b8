"""Every reach into a third-party library's internals, fenced in one package and checked against the version it was written for.

uvicorn and BentoML have no public setting for what these do (docs/patches.md says
what was looked for, and measured). Each module here pins the distribution version
it was written against and says which internal attribute it touches; `check()`
compares the installed version and that attribute's shape (signatures, the source it
relies on) and raises PatchMismatch with what to do. The service runs every check
before it patches anything, so a newer uvicorn or BentoML stops the service at
start with that message instead of misbehaving under load, and tests/test_patches.py
runs the same checks in the unit tier.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


class PatchMismatch(RuntimeError):
    """The installed library is not what a patch was written for."""


@dataclass(frozen=True)
class Pin:
    """What a patch touches: a distribution at one version, and the internal attribute it patches or reads."""

    module: str  # the patch module, e.g. "service.patches.uvicorn_header_timeout"
    distribution: str  # as pip names it: "uvicorn", "bentoml"
    version: str  # the version the patch was written and measured against (pyproject.toml pins the same)
    target: str  # the internal attribute, e.g. "uvicorn.protocols.http.h11_impl.H11Protocol"
    purpose: str  # one line: what the patch does

    def mismatch(self, problem: str) -> PatchMismatch:
        return PatchMismatch(
            f"{self.module} ({self.purpose}) was written for {self.distribution} {self.version}'s {self.target}: {problem}. "
            f"Read the patch against the installed {self.distribution}, see whether a public setting now does the job "
            "(docs/patches.md), then update its Pin and the pin in pyproject.toml"
        )

    def check_version(self) -> None:
        installed = importlib.metadata.version(self.distribution)
        if installed != self.version:
            raise self.mismatch(f"{self.distribution} {installed} is installed")


def check_signature(pin: Pin, function: Callable[..., Any], parameters: Iterable[str]) -> None:
    """PatchMismatch unless `function` takes exactly these parameters (by name, in order)."""
    expected = list(parameters)
    found = list(inspect.signature(function).parameters)
    if found != expected:
        raise pin.mismatch(f"{function.__qualname__} takes ({', '.join(found)}), the patch expects ({', '.join(expected)})")


def check_source(pin: Pin, function: Callable[..., Any], *fragments: str) -> None:
    """PatchMismatch unless `function`'s source holds every fragment (the internal state the patch relies on)."""
    source = inspect.getsource(function)
    missing = [f for f in fragments if f not in source]
    if missing:
        raise pin.mismatch(f"{function.__qualname__} no longer contains {missing}")


def source_digest(function: Callable[..., Any]) -> str:
    """The first 16 hex digits of the sha256 of a function's source: a patch that replaces it must be re-read when it changes."""
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]


_ACTIVE: dict[str, str] = {}


def mark_active(pin: Pin, detail: str = "") -> None:
    """Note that a patch is in effect in this process (the service logs the list at start)."""
    _ACTIVE[pin.module] = f"{pin.module.rsplit('.', 1)[-1]} ({pin.distribution} {pin.version}{': ' + detail if detail else ''})"


def active() -> list[str]:
    """The patches in effect in this process, one line each."""
    return list(_ACTIVE.values())

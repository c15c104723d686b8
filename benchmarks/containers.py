"""Docker from the benchmarks and tests: run the client, and say why containers cannot run here."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence


def docker(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check)


def daemon_problem(tools: Sequence[str] = ("docker",)) -> str | None:
    """Why containers cannot run here (a tool missing, no daemon answering), or None."""
    for tool in tools:
        if shutil.which(tool) is None:
            return f"no {tool} on PATH"
    try:
        info = docker("info", "--format", "{{.ServerVersion}}", timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    if info.returncode != 0 or not info.stdout.strip():
        return f"no Docker daemon reachable ({(info.stderr.strip().splitlines() or ['docker info failed'])[-1]})"
    return None

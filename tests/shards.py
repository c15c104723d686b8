"""`pytest -n N`: N shards of whole test modules, one per pytest-xdist worker, balanced by the time each module took.

Each worker runs one shard from start to end, in the suite's order (unit, integration,
e2e). Why not xdist's `load` or `loadfile`: a worker that knows which modules it will run
can start the next module's server while the current one's tests run (tests/servers.py),
and a shared server stops after the last module of its shard that uses it; with tests or
modules handed out one at a time it could do neither. Why whole modules: their servers,
registries and trained models are module fixtures, and some tests read what an earlier
test of their module left (a log, a metric). Why a scheduler of our own
(`pytest_xdist_make_scheduler`) and not `--dist loadgroup` with xdist_group marks: pytest
9.2 no longer lets xdist 3.8 rename node ids, so loadgroup silently stops grouping
(pytest-dev/pytest-xdist#1386); the scheduler below groups by module path instead.

Shards are filled longest first (LPT) with the seconds each module took in one serial run on
the 2-core machine (SECONDS; a module not listed counts DEFAULT_S per test). The Docker
modules stay in one shard: they build and run the same image tag on one daemon. The
controller and every worker compute the same assignment from the same collection. `-n`
with `--dist loadfile` (or any other mode named explicitly) keeps xdist's own scheduling.
The table is from a machine that had run the suite before. A clean machine (CI) also
builds the Docker image from nothing (deploy/build-image.sh: a debootstrap base and every
layer, 99 s with one core busy) and makes the venvs of Triton's and KServe's gRPC clients
(tests/test_grpc.py, about 40 s); `first_run_seconds` sees which of these a run will do and
counts them, so that a clean machine's shards balance too (they ended 67 s apart when it did
not). To refresh the table after the suite changes:

    python -m pytest -q -p no:xdist --durations=0 > durations.log; python -m tests.shards durations.log
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

SECONDS: dict[str, float] = {
    "tests/test_canary.py": 75,
    "tests/test_training_images.py": 67,
    "tests/test_catalog.py": 65,
    "tests/faults/test_fault_workers.py": 62,
    "tests/test_drift.py": 52,
    "tests/test_replicas.py": 46,
    "tests/test_training.py": 43,
    "tests/test_redeploy.py": 43,
    "tests/test_spark.py": 39,
    "tests/test_playground.py": 32,
    "tests/test_batch.py": 24,
    "tests/test_two_servers.py": 22,
    "tests/faults/test_fault_http.py": 17,
    "tests/faults/test_fault_batch.py": 17,
    "tests/faults/test_fault_container.py": 17,
    "tests/test_grpc.py": 14,
    "tests/faults/test_fault_registry.py": 11,
    "tests/test_container.py": 11,
    "tests/test_service.py": 10,
    "tests/test_sparse_serving.py": 10,
    "tests/test_request_path.py": 9,
    "tests/test_v2.py": 9,
    "tests/test_k8s_manifests.py": 8,
    "tests/faults/test_fault_redeploy.py": 7,
    "tests/test_admission.py": 7,
    "tests/test_packaging.py": 6,
    "tests/test_patches.py": 5,
    "tests/test_executor.py": 3,
}
DOCKER_IMAGE, DOCKER_BUILD_S = "modelserve:cpu", 100  # the image the Docker modules build (tests/test_container.py)
CLIENT_VENVS, CLIENT_VENVS_S = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "modelserve" / "client-venvs", 40
DEFAULT_S = 0.05  # per test of a module not in SECONDS (the unlisted ones are unit modules of a second or two)
TOGETHER = (("tests/test_container.py", "tests/test_replicas.py", "tests/faults/test_fault_container.py"),)
SHARDED = "modelserve_shards"  # workerinput key: this worker runs one shard of a sharded run
SHARD_OF = pytest.StashKey[dict[str, int]]()  # in a worker of a sharded run: test module name (tests.test_v2) -> shard
FIRST_RUN = "modelserve_first_run"  # workerinput key (and the controller's stash): first_run_seconds, looked at once
_FIRST_RUN = pytest.StashKey[dict[str, float]]()


def module_of(nodeid: str) -> str:
    return nodeid.split("::")[0]


def first_run_seconds() -> dict[str, float]:
    """Module path -> seconds it will spend on work a machine does once (module docstring); empty on a machine that did it."""
    extra: dict[str, float] = {}
    if not os.environ.get("MODELSERVE_TEST_IMAGE") and _docker_lacks(DOCKER_IMAGE):
        extra[TOGETHER[0][0]] = DOCKER_BUILD_S
    if not any(CLIENT_VENVS.glob("kserve-*/bin/python")):
        extra["tests/test_grpc.py"] = CLIENT_VENVS_S
    return extra


def _docker_lacks(image: str) -> bool:
    """A Docker daemon answers and does not have `image` (no daemon: the Docker modules skip, nothing is built)."""
    if shutil.which("docker") is None:
        return False
    try:
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True, timeout=30).returncode == 0:
            return False
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def assign(nodeids: Iterable[str], count: int, first_run: dict[str, float] | None = None) -> dict[str, int]:
    """Module path -> shard: units (a module, or a TOGETHER group) longest first, each to the shard with the least so far.

    `first_run`: seconds to add to modules on this machine (first_run_seconds)."""
    first_run = first_run or {}
    tests_per_module = Counter(module_of(nodeid) for nodeid in nodeids)
    units: list[list[str]] = [[m for m in group if m in tests_per_module] for group in TOGETHER]
    units = [unit for unit in units if unit]
    grouped = {module for unit in units for module in unit}
    units += [[module] for module in tests_per_module if module not in grouped]

    def seconds(unit: list[str]) -> float:
        return sum(SECONDS.get(module, DEFAULT_S * tests_per_module[module]) + first_run.get(module, 0.0) for module in unit)

    load = [0.0] * count
    shard_of: dict[str, int] = {}
    for unit in sorted(units, key=seconds, reverse=True):  # stable: ties keep the suite's order
        shard = load.index(min(load))
        load[shard] += seconds(unit)
        shard_of.update(dict.fromkeys(unit, shard))
    return shard_of


def _sharding(config: pytest.Config) -> bool:
    """On the controller: `-n N` with xdist's default distribution, which this plugin replaces by shards."""
    return config.getoption("dist", "no") == "load" and bool(config.getoption("numprocesses", None))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if not _sharding(config):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ShardScheduling(LoadScopeScheduling):
        """xdist's scope scheduler with one scope per shard: worker k gets shard k whole, nothing more."""

        def __init__(self, config: pytest.Config, log: Any) -> None:
            super().__init__(config, log)
            self.shard_of: dict[str, int] = {}

        def schedule(self) -> None:
            if self.collection is None and self.registered_collections:
                self.shard_of = assign(next(iter(self.registered_collections.values())), len(self.nodes), _first_run(self.config))
            super().schedule()

        def _split_scope(self, nodeid: str) -> str:
            return f"shard{self.shard_of[module_of(nodeid)]}"

    return ShardScheduling(config, log)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    node.workerinput[SHARDED] = _sharding(node.config)
    node.workerinput[FIRST_RUN] = _first_run(node.config)  # the workers assign shards as the controller does, from the same numbers


def _first_run(config: pytest.Config) -> dict[str, float]:
    """first_run_seconds, asked once per run (on the controller)."""
    if _FIRST_RUN not in config.stash:
        config.stash[_FIRST_RUN] = first_run_seconds()
    return config.stash[_FIRST_RUN]


def pytest_collection_finish(session: pytest.Session) -> None:
    """In a worker of a sharded run: which module goes to which shard, from the final collection (as the controller sees it)."""
    workerinput = getattr(session.config, "workerinput", {})
    if not workerinput.get(SHARDED):
        return
    shard_of = assign((item.nodeid for item in session.items), int(workerinput["workercount"]), workerinput[FIRST_RUN])
    session.config.stash[SHARD_OF] = {
        item.module.__name__: shard_of[module_of(item.nodeid)]  # type: ignore[attr-defined]
        for item in session.items
    }


def table_from_durations(log: Path) -> dict[str, float]:
    """Seconds per module from a `pytest --durations=0` report (setup, call and teardown summed)."""
    seconds: Counter[str] = Counter()
    for line in log.read_text().splitlines():
        found = re.match(r"\s*([\d.]+)s (?:call|setup|teardown)\s+(\S+?\.py)::", line)
        if found:
            seconds[found[2]] += float(found[1])
    return {module: round(s) for module, s in seconds.most_common() if s >= 2.5}


if __name__ == "__main__":
    for module, s in table_from_durations(Path(sys.argv[1])).items():
        print(f'    "{module}": {s},')

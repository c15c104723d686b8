"""One shard of whole test modules per pytest-xdist worker, balanced by the time each module took.

The README's test command runs `pytest -n 2 --dist loadgroup`: two workers, and every test
carries an `xdist_group` mark naming its shard, so each worker runs one shard from start to
end, in the suite's order (unit, integration, e2e). Why not xdist's own `loadfile`: a worker
that knows which modules it will run can start the next module's server while the current
one's tests run (tests/servers.py), and a shared server stops after the last module of its
shard that uses it; with modules handed out one at a time it could do neither. Why whole
modules: their servers, registries and trained models are module fixtures.

Shards are filled longest first (LPT) with the seconds each module took in one serial run on
the 2-core machine (SECONDS; a module not listed counts DEFAULT_S per test). The Docker
modules stay in one shard: they build and run the same image tag on one daemon. Every worker
computes the same assignment from the same collection, as xdist requires. To refresh the
table after the suite changes:

    python -m pytest -q -p no:xdist --durations=0 > durations.log; python -m tests.shards durations.log
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

SECONDS: dict[str, float] = {
    "tests/test_training.py": 174,
    "tests/test_replicas.py": 126,
    "tests/test_catalog.py": 91,
    "tests/test_canary.py": 82,
    "tests/faults/test_fault_workers.py": 69,
    "tests/test_spark.py": 67,
    "tests/test_drift.py": 53,
    "tests/test_redeploy.py": 38,
    "tests/test_batch.py": 26,
    "tests/faults/test_fault_container.py": 23,
    "tests/test_two_servers.py": 21,
    "tests/test_playground.py": 21,
    "tests/faults/test_fault_http.py": 18,
    "tests/faults/test_fault_batch.py": 15,
    "tests/test_grpc.py": 13,
    "tests/test_container.py": 10,
    "tests/test_service.py": 9,
    "tests/test_request_path.py": 8,
    "tests/test_v2.py": 7,
    "tests/faults/test_fault_redeploy.py": 7,
    "tests/test_sparse_serving.py": 7,
    "tests/test_packaging.py": 7,
    "tests/faults/test_fault_registry.py": 7,
    "tests/test_k8s_manifests.py": 6,
    "tests/test_patches.py": 5,
    "tests/test_admission.py": 3,
    "tests/test_executor.py": 3,
}
DEFAULT_S = 0.05  # per test of a module not in SECONDS (the unlisted ones are unit modules of a second or two)
TOGETHER = (("tests/test_container.py", "tests/test_replicas.py", "tests/faults/test_fault_container.py"),)
SHARD_OF = pytest.StashKey[dict[str, int]]()  # test module name (tests.test_v2) -> its shard, in the workers of a sharded run


def worker_count(config: pytest.Config) -> int:
    """The number of xdist workers when this process is one of them running `--dist loadgroup`; else 0 (no shards)."""
    if not getattr(config, "workerinput", None) or not config.getoption("loadgroup", False):
        return 0
    return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))


def assign(tests_per_module: dict[str, int], count: int) -> dict[str, int]:
    """Module path -> shard: units (a module, or a TOGETHER group) longest first, each to the shard with the least so far."""
    units: list[list[str]] = []
    for group in TOGETHER:
        members = [module for module in group if module in tests_per_module]
        if members:
            units.append(members)
    grouped = {module for unit in units for module in unit}
    units += [[module] for module in tests_per_module if module not in grouped]

    def seconds(unit: list[str]) -> float:
        return sum(SECONDS.get(module, DEFAULT_S * tests_per_module[module]) for module in unit)

    load = [0.0] * count
    shard_of: dict[str, int] = {}
    for unit in sorted(units, key=seconds, reverse=True):  # stable: ties keep the suite's order
        shard = load.index(min(load))
        load[shard] += seconds(unit)
        shard_of.update(dict.fromkeys(unit, shard))
    return shard_of


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reads the xdist_group marks into the test ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In a sharded run, give every test the xdist_group of its module's shard."""
    count = worker_count(config)
    if count < 2:
        return
    tests_per_module = Counter(item.nodeid.split("::")[0] for item in items)
    shard_of = assign(dict(tests_per_module), count)
    by_name: dict[str, int] = {}
    for item in items:
        shard = shard_of[item.nodeid.split("::")[0]]
        item.add_marker(pytest.mark.xdist_group(f"shard{shard}"))
        by_name[item.module.__name__] = shard  # type: ignore[attr-defined]
    config.stash[SHARD_OF] = by_name


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

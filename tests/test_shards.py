"""The shards of `pytest -n N` (tests/shards.py): whole modules, the Docker ones together, balanced, the same in every process."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.shards import SECONDS, TOGETHER, assign, table_from_durations

pytestmark = pytest.mark.unit

SUITE = [f"{module}::test_{i}" for module in SECONDS for i in range(3)] + ["tests/test_new.py::test_a", "tests/test_new.py::test_b"]


def test_every_module_goes_whole_to_one_shard_and_the_docker_modules_together() -> None:
    shard_of = assign(SUITE, 2)
    assert set(shard_of) == {nodeid.split("::")[0] for nodeid in SUITE}
    assert set(shard_of.values()) == {0, 1}
    for group in TOGETHER:
        assert len({shard_of[module] for module in group}) == 1, group


def test_the_shards_are_balanced_by_measured_seconds() -> None:
    for count in (2, 3, 4):
        shard_of = assign(SUITE, count)
        load = [sum(SECONDS.get(m, 0.0) for m, shard in shard_of.items() if shard == k) for k in range(count)]
        biggest = max(sum(SECONDS[m] for m in group) for group in TOGETHER)
        assert max(load) - min(load) <= max(biggest, max(SECONDS.values())), (count, load)


def test_what_a_clean_machine_does_once_is_counted_where_it_happens() -> None:
    """A clean CI machine builds the Docker image from nothing in the Docker group: its shard takes fewer other modules."""
    docker = TOGETHER[0]
    warm, clean = assign(SUITE, 2), assign(SUITE, 2, {docker[0]: 100})

    def others(shard_of: dict[str, int]) -> float:
        return sum(SECONDS.get(m, 0.0) for m, shard in shard_of.items() if shard == shard_of[docker[0]] and m not in docker)

    assert others(clean) < others(warm) - 30, (others(clean), others(warm))
    load = [sum(SECONDS.get(m, 0.0) for m, shard in clean.items() if shard == k) + 100 * (k == clean[docker[0]]) for k in (0, 1)]
    assert abs(load[0] - load[1]) <= max(SECONDS.values()), load


def test_the_table_is_read_from_a_durations_report(tmp_path: Path) -> None:
    report = tmp_path / "durations.log"
    report.write_text(
        "12.50s setup    tests/test_a.py::test_x\n30.00s call     tests/test_a.py::test_y\n1.00s call     tests/test_b.py::test_z\n"
    )
    assert table_from_durations(report) == {"tests/test_a.py": 42}

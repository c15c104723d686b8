"""Three replicas of the serving image behind HAProxy (deploy/replicas/compose.yaml), as deployed.

Needs a Docker daemon, docker-compose and hey (skipped, with the reason shown, where any is
missing: CI has no daemon). Builds modelserve:cpu with deploy/build-image.sh (cached layers:
seconds) unless MODELSERVE_TEST_IMAGE names an image. About 2 minutes here: one replica is
killed under 32 clients of load, a new version is promoted in the shared registry, and one
replica is scaled away (SIGTERM, drain), each under 32 clients of load.
The measured numbers are printed (pytest -s) and reported by benchmarks/replicas.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.replicas import (
    Cluster,
    docker_problem,
    failed,
    kill_under_load,
    promote_under_load,
    registry_with_next_version,
    scale_down_under_load,
    serving_image,
)

pytestmark = pytest.mark.e2e

REPLICAS = 3
CLIENTS = 32
POLL_S = 2
# The slack on a shared 2-core machine: a replica that comes back loads its models while the
# other two serve 32 clients (12-15 s measured); a promotion loads, checks and warms the new
# version after noticing it (under 0.5 s measured).
COME_BACK_S = 60
RELOAD_SLACK_S = 5


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, int]:
    return registry_with_next_version(tmp_path_factory.mktemp("replicas"))


@pytest.fixture(scope="module")
def cluster(registry: tuple[Path, int, int]) -> Iterator[Cluster]:
    problem = docker_problem()
    if problem:
        pytest.skip(f"replica tests need Docker, docker-compose and hey: {problem}")
    box = Cluster(serving_image(os.environ.get("MODELSERVE_TEST_IMAGE")), registry[0], poll_s=POLL_S)
    try:
        print(f"\n{REPLICAS} replicas + HAProxy UP in {box.up(REPLICAS):.1f}s")
        yield box
    finally:
        box.down()


def test_balancer_spreads_requests_over_every_replica(cluster: Cluster) -> None:
    with httpx.Client(base_url=cluster.url, timeout=30) as client:
        answers = [client.post("/sentiment", json={"texts": ["A fine, moving film."]}) for _ in range(30)]
        assert client.get("/readyz").status_code == 200
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    by = {a.headers["x-served-by"] for a in answers}
    assert len(by) == REPLICAS, f"leastconn over {REPLICAS} replicas, answered by {by}"


def test_a_killed_replica_loses_no_request_and_comes_back(cluster: Cluster) -> None:
    result = kill_under_load(cluster, clients=CLIENTS)
    print(f"\n{result}")
    assert result.requests > 1000, result
    assert result.failed == 0, f"requests lost despite retries: {result}"
    assert result.marked_down_s < 3, f"HAProxy kept the dead replica in rotation: {result}"
    assert result.back_up_s < COME_BACK_S and result.serving_s < COME_BACK_S, f"the replica did not come back: {result}"
    cluster.wait_up(REPLICAS)


def test_a_promotion_reaches_every_replica_without_a_failed_request(cluster: Cluster, registry: tuple[Path, int, int]) -> None:
    _, old, new = registry
    result = promote_under_load(cluster, old, new, clients=CLIENTS)
    print(f"\n{result}")
    assert len(result.seen_s) == REPLICAS, f"not every replica switched: {result}"
    assert max(result.seen_s.values()) < POLL_S + RELOAD_SLACK_S, result
    assert result.failed == 0 and result.requests > 500, result
    assert result.versions_after == {new: 12 * REPLICAS}, result
    assert len(result.answered_by) == REPLICAS, result


def test_scaling_down_under_load_drains_without_a_failed_request(cluster: Cluster) -> None:
    """The replica removed gets SIGTERM: it finishes what it has, HAProxy retries what it refuses."""
    run, took = scale_down_under_load(cluster, REPLICAS - 1, clients=CLIENTS)
    print(f"\nscaled {REPLICAS} -> {REPLICAS - 1} in {took:.1f}s under load: {sum(run.codes.values())} requests, codes {run.codes}")
    assert len(cluster.replicas()) == REPLICAS - 1
    assert failed(run) == 0 and sum(run.codes.values()) > 500, run.codes

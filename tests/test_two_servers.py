"""Two `bentoml serve` of one user on one host, as a user starts them (one BENTOML_HOME): neither touches the other's metrics.

BentoML keeps every server's metrics in BENTOML_HOME/prometheus_multiproc_dir and empties it
when a server starts: the first server then read the second's (empty) series for good, and
its canary was rolled back for "not enough traffic" under 30,000 requests. Each server now
has a directory of its own (service/http/metrics.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.launch import Server, start_server
from service.core.registry import CANDIDATE_FILE, CURRENT_FILE, Registry
from tests.faults.faultlib import HOUSE, copy_version, registry_of
from tests.traffic import Traffic
from training.redeploy import ServiceClient, live_phase

pytestmark = pytest.mark.integration

TOKEN = "two-servers-token"
NAME = "boston_housing"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = registry_of(tmp_path_factory.mktemp("registry"), NAME)
    assert copy_version(root, NAME) == 2  # a good candidate: the same model
    return root


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bentoml_home")  # one user's BENTOML_HOME, shared by both servers


@pytest.fixture(scope="module")
def first(root: Path, home: Path) -> Iterator[Server]:
    server = start_server(root, root.parent / "first.log", BENTOML_HOME=str(home), MODELSERVE_ADMIN_TOKEN=TOKEN)
    yield server
    server.stop()


def answered(url: str, version: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "modelserve_requests_total" and s.labels.get("model") == NAME and s.labels.get("version") == version
    )


def test_a_second_server_leaves_the_first_ones_metrics_and_its_canary_decides(
    first: Server, root: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with httpx.Client(base_url=first.url, timeout=60) as client:
        for _ in range(20):
            assert client.post("/predict_price", json={"rows": [HOUSE]}).status_code == 200
    assert answered(first.url, "1") == 20

    second = start_server(root, root.parent / "second.log", BENTOML_HOME=str(home))
    try:
        args = argparse.Namespace(model=NAME, canary=50.0, shadow=False, watch=12.0, min_requests=20, max_error_rate_increase=0.01)
        args.max_p99_increase, args.max_disagreement, args.max_difference = 10.0, 0.05, 1.0
        with Traffic(first.url, "/predict_price", [{"rows": [HOUSE]}]):  # a canary on the first server, while the second one runs
            assert live_phase(args, Registry(root), ServiceClient(first.url, TOKEN), 2, [HOUSE]) == 0
        assert (root / NAME / CURRENT_FILE).read_text().strip() == "2" and not (root / NAME / CANDIDATE_FILE).exists()
        steps = [int(line[1 : line.index("]")]) for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
        assert steps == sorted(steps) and steps[-1] == 7, f"steps print in order (issue 23, 6: [6] promote came before [5]): {steps}"
        assert answered(first.url, "1") > 20, "the first server's counts from before the second one started are kept"
        with httpx.Client(base_url=second.url, timeout=60) as client:
            assert client.post("/predict_price", json={"rows": [HOUSE]}).status_code == 200
        assert answered(second.url, "1") + answered(second.url, "2") == 1, "the second server counts only its own"
    finally:
        second.stop()
    assert answered(first.url, "2") > 0, "the first server still counts after the second one stopped"

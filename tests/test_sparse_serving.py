"""A dense text version serves over HTTP until a sparse-input one is promoted, which answers alike (friendly API and v2).

The sparse version is made from the shipped dense one by the export's own rewrite
(tests/test_sparse_input.py's `sparse_copy`).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest

from benchmarks.launch import start_server
from tests.test_sparse_input import SHIPPED, sparse_copy

pytestmark = pytest.mark.integration


def test_a_dense_version_serves_over_http_until_a_sparse_one_is_promoted(tmp_path: Path) -> None:
    """The friendly API and the v2 protocol (texts as BYTES) answer from the dense version, then from the sparse one, alike."""
    registry = sparse_copy(2, tmp_path / "models")  # v1: sparse
    shutil.copytree(SHIPPED.get("imdb_sentiment", 2).path, tmp_path / "models" / "imdb_sentiment" / "2")  # v2: dense, as shipped
    registry.promote("imdb_sentiment", 2)
    text = "A moving, beautifully acted film; not dull at all."
    v2_body = {"inputs": [{"name": "texts", "datatype": "BYTES", "shape": [1], "data": [text]}]}
    server = start_server(tmp_path / "models", tmp_path / "server.log", MODELSERVE_MODELS="imdb_sentiment", MODELSERVE_RELOAD_POLL_S="1")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:

            def answers() -> tuple[dict, dict]:
                friendly = client.post("/sentiment", json={"texts": [text]})
                protocol = client.post("/v2/models/imdb_sentiment/infer", json=v2_body)
                assert friendly.status_code == 200 and protocol.status_code == 200, (friendly.text, protocol.text)
                return friendly.json()[0], protocol.json()

            dense, dense_v2 = answers()
            assert dense["version"] == 2 and dense_v2["model_version"] == "2"
            registry.promote("imdb_sentiment", 1)
            deadline = time.monotonic() + 60
            while (sparse := answers())[0]["version"] != 1:
                assert time.monotonic() < deadline, "the sparse version was not picked up"
                time.sleep(0.5)
            assert abs(sparse[0]["probability_positive"] - dense["probability_positive"]) <= 1e-5
            assert sparse[0]["label"] == dense["label"] and sparse[1]["model_version"] == "1"
            outputs = {o["name"]: o["data"] for o in sparse[1]["outputs"]}
            assert abs(outputs["probability_positive"][0] - dense["probability_positive"]) <= 1e-5
    finally:
        server.stop()

"""Hot reload and the redeploy script against a real `bentoml serve` on a temporary registry."""

from __future__ import annotations

import asyncio
import csv
import importlib.util
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from benchmarks.launch import Server, start_server
from service.core.registry import CURRENT_FILE, METADATA_FILE, MODEL_FILE, Registry, sha256_file
from tests.generate import review, write_reviews_csv
from training.__main__ import main as train_main
from training.redeploy import main as redeploy_main

# TensorFlow (training) is imported when a test trains, not when the tests are collected.
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="pip install -e '.[train]'")]

TOKEN = "test-admin-token"
NAME = "imdb_sentiment"
TRAIN_ARGS = ["--epochs", "12", "--batch-size", "32", "--max-tokens", "300"]


@pytest.fixture(scope="module")
def registry_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("registry")
    data = write_reviews_csv(root.parent / "reviews_v1.csv", n=600, seed=0)
    assert train_main([NAME, "--data", str(data), "--registry", str(root), *TRAIN_ARGS]) == 0
    assert train_main(["promote", NAME, "1", "--registry", str(root)]) == 0
    return root


@pytest.fixture(scope="module")
def server(registry_root: Path) -> Iterator[Server]:
    server = start_server(registry_root, registry_root.parent / "server.log", MODELSERVE_ADMIN_TOKEN=TOKEN, MODELSERVE_RELOAD_POLL_S="0")
    yield server
    server.stop()


@pytest.fixture()
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def copy_version(root: Path, source: int, corrupt: str | None = None) -> int:
    """A new version directory made from an existing one (optionally broken on purpose)."""
    registry = Registry(root)
    target = max(registry.versions(NAME)) + 1
    path = root / NAME / str(target)
    shutil.copytree(root / NAME / str(source), path)
    metadata = json.loads((path / METADATA_FILE).read_text())
    metadata["version"] = target
    if corrupt == "bytes":  # the checksum no longer matches
        data = bytearray((path / MODEL_FILE).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (path / MODEL_FILE).write_bytes(bytes(data))
    elif corrupt == "graph":  # checksum matches, but it is not a model
        (path / MODEL_FILE).write_bytes(b"this is not an onnx graph")
        metadata["sha256"] = sha256_file(path / MODEL_FILE)
    (path / METADATA_FILE).write_text(json.dumps(metadata))
    return target


def reload(client: httpx.Client, token: str | None = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post("/admin/reload", json={"model": NAME}, headers=headers)


def served_version(client: httpx.Client) -> int:
    return next(m["version"] for m in client.get("/models").json()["models"] if m["name"] == NAME)


def test_admin_reload_needs_the_token(client: httpx.Client) -> None:
    assert reload(client, token=None).status_code == 401
    assert reload(client, token="wrong").status_code == 401
    assert reload(client).status_code == 200


def test_reload_under_load_drops_nothing(client: httpx.Client, server: Server, registry_root: Path) -> None:
    """8 clients keep sending while the service swaps v1 -> new -> v1: every request succeeds."""
    registry = Registry(registry_root)
    new = copy_version(registry_root, 1)
    rng = np.random.default_rng(3)
    texts = [review(rng, bool(i % 2)) for i in range(16)]

    async def load(stop: asyncio.Event, seen: list[tuple[float, int, int | None]]) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:

            async def worker(k: int) -> None:
                i = k
                while not stop.is_set():
                    response = await http.post("/sentiment", json={"texts": [texts[i % len(texts)]]})
                    version = response.json()[0]["version"] if response.status_code == 200 else None
                    seen.append((time.monotonic(), response.status_code, version))
                    i += 8

            await asyncio.gather(*(worker(k) for k in range(8)))

    async def scenario() -> list[tuple[float, int, int | None]]:
        stop, seen = asyncio.Event(), []
        task = asyncio.create_task(load(stop, seen))
        await asyncio.sleep(1.5)
        for version in (new, 1):
            registry.promote(NAME, version)
            response = await asyncio.to_thread(reload, client)
            assert response.status_code == 200, response.text
            assert response.json()["results"][0]["version"] == version
            await asyncio.sleep(1.5)
        stop.set()
        await task
        return seen

    seen = asyncio.run(scenario())
    statuses = [s for _, s, _ in seen]
    versions = [v for _, _, v in sorted(seen)]
    assert len(seen) > 50 and set(statuses) == {200}, f"{len(seen)} requests, statuses {set(statuses)}"
    assert set(versions) == {1, new}, "every response names the version that produced it"
    assert versions[-20:] == [1] * 20


@pytest.mark.parametrize(("corrupt", "reason"), [("bytes", "checksum mismatch"), ("graph", "onnxruntime cannot load")])
def test_broken_version_is_refused_and_old_keeps_serving(client: httpx.Client, registry_root: Path, corrupt: str, reason: str) -> None:
    before = served_version(client)
    broken = copy_version(registry_root, 1, corrupt=corrupt)
    (registry_root / NAME / CURRENT_FILE).write_text(f"{broken}\n")  # what a careless hand-edit would do
    try:
        response = reload(client)
        assert response.status_code == 409
        assert reason in response.json()["error"] and f"v{before} keeps serving" in response.json()["error"]
        assert served_version(client) == before
        answer = client.post("/sentiment", json={"texts": ["a wonderful, moving film"]})
        assert answer.status_code == 200 and answer.json()[0]["version"] == before
        assert reason in json.dumps(client.get("/models").json()["refused_reloads"])
    finally:
        Registry(registry_root).promote(NAME, before)


def test_gate_refuses_a_worse_model_unless_forced(registry_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One epoch on shuffled labels is worse than the served model: not promoted without --force."""
    registry = Registry(registry_root)
    served = registry.current_version(NAME)
    good = write_reviews_csv(tmp_path / "good.csv", n=600, seed=5)
    with open(good, newline="") as handle:
        rows = list(csv.reader(handle))
    labels = [r[1] for r in rows[1:]]
    np.random.default_rng(0).shuffle(labels)
    shuffled = tmp_path / "shuffled.csv"
    with open(shuffled, "w", newline="") as handle:
        csv.writer(handle).writerows([rows[0]] + [[r[0], y] for r, y in zip(rows[1:], labels)])
    # The gate scores both versions on the held-out split of the new data: use the
    # correctly labelled file as test data, so "worse" is measured on the truth.
    args = [
        NAME,
        "--data",
        str(shuffled),
        "--test-data",
        str(good),
        "--registry",
        str(registry_root),
        "--epochs",
        "1",
        "--max-tokens",
        "300",
        "--no-reload",
    ]

    assert redeploy_main(args) == 1
    captured = capsys.readouterr()
    assert "gate:" in captured.out and ": worse" in captured.out
    assert "not promoted" in captured.err
    assert registry.current_version(NAME) == served
    rejected = max(registry.versions(NAME))
    assert rejected != served, "the rejected version is kept in the registry, unpromoted"

    assert redeploy_main([*args, "--force"]) == 0
    assert "--force given" in capsys.readouterr().out
    assert registry.current_version(NAME) == max(registry.versions(NAME))
    registry.promote(NAME, served)


def test_retrain_promote_reload_then_rollback(
    client: httpx.Client, server: Server, registry_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = Registry(registry_root)
    before = served_version(client)
    data = write_reviews_csv(tmp_path / "new_reviews.csv", n=600, seed=11)
    common = ["--registry", str(registry_root), "--url", server.url, "--token", TOKEN]
    assert redeploy_main([NAME, "--data", str(data), *TRAIN_ARGS, "--tolerance", "0.05", *common]) == 0
    out = capsys.readouterr().out
    for marker in ("[1] training", "[2] exporting", "[3] gate:", "[4] CURRENT:", "[5] service at", "[5] smoke test over HTTP"):
        assert marker in out, out
    new = registry.current_version(NAME)
    assert new != before and served_version(client) == new
    assert client.post("/sentiment", json={"texts": ["a wonderful film"]}).json()[0]["version"] == new

    assert redeploy_main(["rollback", NAME, *common]) == 0
    assert registry.current_version(NAME) == before
    assert served_version(client) == before
    assert client.post("/sentiment", json={"texts": ["a wonderful film"]}).json()[0]["version"] == before


def test_service_follows_current_by_itself(registry_root: Path, tmp_path: Path) -> None:
    """With MODELSERVE_RELOAD_POLL_S set, a promotion is picked up without an admin call (every worker)."""
    registry = Registry(registry_root)
    before = registry.current_version(NAME)
    server = start_server(registry_root, tmp_path / "poll.log", MODELSERVE_RELOAD_POLL_S="1", MODELSERVE_WORKERS="2")
    try:
        new = copy_version(registry_root, before)
        registry.promote(NAME, new)
        deadline = time.monotonic() + 30
        versions: set[int] = set()
        while time.monotonic() < deadline:
            versions = {httpx.post(f"{server.url}/sentiment", json={"texts": ["fine"]}).json()[0]["version"] for _ in range(8)}
            if versions == {new}:
                break
            time.sleep(0.5)
        assert versions == {new}, "both workers moved to the promoted version"
    finally:
        server.stop()
        registry.promote(NAME, before)

"""Damaged registry entries under a real two-worker `bentoml serve` that follows CURRENT.

Each damage is a refusal: the admin reload answers 409 with the reason, /models lists
it under refused_reloads, and both workers keep answering with the version they
served. The CURRENT watcher survives all of it: a good version promoted afterwards is
picked up by both workers, and the log has no dead thread.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from benchmarks.launch import Server
from service.core.registry import CANDIDATE_FILE, CURRENT_FILE, METADATA_FILE, MODEL_FILE, Registry, sha256_file
from tests.faults.faultlib import ADMIN, TABULAR, TOKEN, copy_version, log_problems, registry_of, versions_answering, wait_until
from tests.servers import ServerSpec

pytestmark = pytest.mark.integration

POLL_S = 1
MAX_BYTES = 1_000_000  # MODELSERVE_MAX_MODEL_BYTES and _MAX_ASSET_BYTES here: the tabular model is 113 kB, its scaler 1 kB


SERVER = ServerSpec(
    env={
        "MODELSERVE_ADMIN_TOKEN": TOKEN,
        "MODELSERVE_WORKERS": "2",
        "MODELSERVE_RELOAD_POLL_S": str(POLL_S),
        "MODELSERVE_MAX_MODEL_BYTES": str(MAX_BYTES),
        "MODELSERVE_MAX_ASSET_BYTES": str(MAX_BYTES),
    },
    registry=lambda root: registry_of(root, TABULAR),
)


@pytest.fixture(scope="module")
def root(server_registry: Path) -> Path:
    return server_registry


def edit_metadata(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        metadata = json.loads((path / METADATA_FILE).read_text())
        change(metadata)
        (path / METADATA_FILE).write_text(json.dumps(metadata))

    return mutate


def write(name: str, content: str | bytes) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        target = path / name
        target.unlink()
        target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)

    return mutate


def make_dir(name: str) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        (path / name).unlink()
        (path / name).mkdir()

    return mutate


def not_onnx(path: Path) -> None:
    (path / MODEL_FILE).write_bytes(b"not an onnx graph")
    edit_metadata(lambda m: m.update(sha256=sha256_file(path / MODEL_FILE)))(path)


def link_out(path: Path) -> None:
    """The version directory becomes a symlink to a copy outside the registry (defect 8)."""
    outside = path.parent.parent.parent / f"outside-{path.name}"
    shutil.move(path, outside)
    path.symlink_to(outside, target_is_directory=True)


def model_link_out(path: Path) -> None:
    outside = path.parent.parent.parent / f"outside-model-{path.name}.onnx"
    shutil.move(path / MODEL_FILE, outside)
    (path / MODEL_FILE).symlink_to(outside)


def scaler_file(path: Path) -> Path:
    return path / json.loads((path / METADATA_FILE).read_text())["preprocessing"]["scaler_file"]


def scaler_named(name: str) -> Callable[[Path], None]:
    """metadata's scaler_file names `name` (an absolute path, a path out of the version directory)."""
    return edit_metadata(lambda m: m["preprocessing"].update(scaler_file=name))


def scaler_replaced(make: Callable[[Path], None]) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        target = scaler_file(path)
        target.unlink()
        make(target)

    return mutate


def edit_scaler(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def mutate(path: Path) -> None:
        scaler = json.loads(scaler_file(path).read_text())
        change(scaler)
        scaler_file(path).write_text(json.dumps(scaler))

    return mutate


def huge_model(path: Path) -> None:
    """A model.onnx over MODELSERVE_MAX_MODEL_BYTES, its checksum in metadata (so only the size refuses it)."""
    with open(path / MODEL_FILE, "ab") as handle:
        handle.write(b"\0" * (MAX_BYTES + 1))
    edit_metadata(lambda m: m.update(sha256=sha256_file(path / MODEL_FILE)))(path)


# Damage to a new version that CURRENT is pointed at: (mutation, words the refusal must contain).
VERSION_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "metadata is []": (write(METADATA_FILE, "[]"), "must be a JSON object, is a JSON list"),
    "metadata is a directory": (make_dir(METADATA_FILE), "metadata.json cannot be read"),
    "inputs: [1]": (edit_metadata(lambda m: m.update(inputs=[1])), "'inputs' needs name, dtype and shape"),
    "inputs: []": (edit_metadata(lambda m: m.update(inputs=[])), "'inputs' is empty"),
    "metadata not JSON": (write(METADATA_FILE, '{"name": '), "not valid JSON"),
    "metadata is null": (write(METADATA_FILE, "null"), "must be a JSON object"),
    "metadata is binary": (write(METADATA_FILE, b"\xff\xfe\x00\x01"), "not valid JSON"),
    "metadata missing": (lambda p: (p / METADATA_FILE).unlink(), "no metadata.json"),
    "labels not a list": (edit_metadata(lambda m: m.update(labels="price")), "'labels' should be list"),
    "version is true": (edit_metadata(lambda m: m.update(onnx_opset=True)), "'onnx_opset' should be int"),
    "checksum mismatch": (write(MODEL_FILE, b"tampered"), "checksum mismatch"),
    "model.onnx missing": (lambda p: (p / MODEL_FILE).unlink(), "model.onnx is missing"),
    "model.onnx not a graph": (not_onnx, "onnxruntime cannot load"),
    "wrong kind of model": (edit_metadata(lambda m: m["preprocessing"].update(kind="text")), "is a 'text' model"),
    "scaler missing": (lambda p: scaler_file(p).unlink(), "preprocessing assets unusable"),
    "scaler garbage": (lambda p: scaler_file(p).write_text('{"features": 3}'), "preprocessing assets unusable"),
    "version links outside the registry": (link_out, "outside the registry"),
    "model.onnx links outside": (model_link_out, "link out of its version directory"),
    # Asset files (issue 23, 7 and 16): only regular files inside the version directory, each bounded.
    "scaler is /dev/zero": (scaler_named("/dev/zero"), "must be a file name relative to the version directory"),
    "scaler out of the version": (scaler_named("../../../outside.json"), "is not inside the version directory"),
    "scaler links to /dev/zero": (scaler_replaced(lambda t: t.symlink_to("/dev/zero")), "is not inside the version directory"),
    "scaler is a FIFO": (scaler_replaced(lambda t: os.mkfifo(t)), "not a regular file"),
    "scaler is a directory": (scaler_replaced(lambda t: t.mkdir()), "cannot be read"),
    "scaler over the asset limit": (scaler_replaced(lambda t: t.write_text(" " * (MAX_BYTES + 1))), "larger than 1,000,000"),
    "model over the model limit": (huge_model, "over the limit of 1,000,000"),
    # Damage that raised other types than the registry's (issue 23, 8): refusals all the same.
    "log1p names no feature": (edit_scaler(lambda s: s.update(log1p=["CRIM", "NOPE"])), "log1p must name features"),
    "scaler nested deeply": (scaler_replaced(lambda t: t.write_text("[" * 100_000)), "not valid JSON"),
    "scaler std of zero": (edit_scaler(lambda s: s.update(std=[0.0] * len(s["std"]))), "std must be positive"),
    "scaler mean too short": (edit_scaler(lambda s: s.update(mean=s["mean"][:3])), "mean must hold one finite number per feature"),
}

# Damage to CURRENT itself: (content, or None to remove the file / "dir" to make it a directory; words of the refusal).
POINTER_DAMAGE: dict[str, tuple[str | bytes | None, str]] = {
    "superscript two": ("\u00b2\n", "non-ASCII"),
    "arabic-indic digits": ("\u0661\u0662\n", "non-ASCII"),
    "a word": ("latest\n", "expected a version number, found 'latest'"),
    "empty": ("", "expected a version number, found ''"),
    "negative": ("-1\n", "expected a version number"),
    "a missing version": ("99\n", "no version 99"),
    "binary": (b"\x00\x9f\x92\x96", "non-ASCII"),
    "huge": ("1" * 100_000, "cannot be read"),
    "a directory": ("dir", "cannot be read"),
    "a FIFO": ("fifo", "not a regular file"),  # the watcher and /admin/reload waited for a writer (issue 23, 16)
    "removed": (None, "no CURRENT"),
}


def reload(client: httpx.Client) -> httpx.Response:
    return client.post("/admin/reload", json={"model": TABULAR}, headers=ADMIN)


def set_pointer(root: Path, content: str | bytes | None) -> None:
    pointer = root / TABULAR / CURRENT_FILE
    if pointer.is_dir():
        pointer.rmdir()
    elif pointer.exists():
        pointer.unlink()
    if content == "dir":
        pointer.mkdir()
    elif content == "fifo":
        os.mkfifo(pointer)
    elif content is not None:
        pointer.write_bytes(content) if isinstance(content, bytes) else pointer.write_text(content)


def assert_refused(client: httpx.Client, server: Server, words: str) -> None:
    response = client.post("/admin/reload", json={"model": TABULAR}, headers=ADMIN, timeout=20)  # a FIFO held it for ever
    assert response.status_code == 409, response.text[:500]
    assert words in response.json()["error"] and "v1 keeps serving" in response.json()["error"], response.json()["error"]
    models = client.get("/models").json()
    assert any(words in w["refused"].get(TABULAR, {}).get("reason", "") for w in models["workers"]), models["workers"]
    assert versions_answering(server.url, 6) == {1: 6}, "the workers keep answering with v1"


@pytest.mark.parametrize("case", list(VERSION_DAMAGE))
def test_a_damaged_version_is_refused_and_v1_keeps_serving(client: httpx.Client, server: Server, root: Path, case: str) -> None:
    mutate, words = VERSION_DAMAGE[case]
    version = copy_version(root, TABULAR, 1, mutate)
    set_pointer(root, f"{version}\n")
    try:
        assert_refused(client, server, words)
    finally:
        set_pointer(root, "1\n")


@pytest.mark.parametrize("case", list(POINTER_DAMAGE))
def test_a_damaged_current_is_refused_and_v1_keeps_serving(client: httpx.Client, server: Server, root: Path, case: str) -> None:
    content, words = POINTER_DAMAGE[case]
    set_pointer(root, content)
    try:
        assert_refused(client, server, words)
    finally:
        set_pointer(root, "1\n")


def test_a_version_folder_with_an_odd_name_is_not_a_version(root: Path) -> None:
    (root / TABULAR / "\u00b2").mkdir()
    (root / TABULAR / "\u0661").mkdir()
    try:
        assert 1 in Registry(root).versions(TABULAR) and len(Registry(root).versions(TABULAR)) == len(list((root / TABULAR).glob("[0-9]*")))
    finally:
        (root / TABULAR / "\u00b2").rmdir()
        (root / TABULAR / "\u0661").rmdir()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_version_is_refused(client: httpx.Client, server: Server, root: Path) -> None:
    version = copy_version(root, TABULAR, 1, lambda p: (p / METADATA_FILE).chmod(0))
    set_pointer(root, f"{version}\n")
    try:
        assert_refused(client, server, "cannot be read")
    finally:
        set_pointer(root, "1\n")


def test_a_fifo_as_candidate_does_not_hold_the_watchers(client: httpx.Client, server: Server, root: Path) -> None:
    """Issue 23, 16: the watchers read CANDIDATE whole; a FIFO held them until something wrote to it, so nothing else was followed."""
    os.mkfifo(root / TABULAR / CANDIDATE_FILE)
    try:
        good = copy_version(root, TABULAR, 1)
        Registry(root).promote(TABULAR, good)
        wait_until(lambda: versions_answering(server.url, 8) == {good: 8}, timeout=30, every=0.5)
        refused = client.get("/models").json()["refused_candidates"]
        assert "not a regular file" in refused[TABULAR]["reason"], refused
    finally:
        (root / TABULAR / CANDIDATE_FILE).unlink()
        Registry(root).promote(TABULAR, 1)
        wait_until(lambda: versions_answering(server.url, 8) == {1: 8}, timeout=30, every=0.5)


@pytest.mark.parametrize("case", ["log1p names no feature", "scaler nested deeply", "scaler is a FIFO"])
def test_a_refused_candidate_leaves_nothing_on_disk(client: httpx.Client, server: Server, root: Path, case: str) -> None:
    """Issue 23, 8: the refusal answered 400 "invalid JSON body" or 500 and left CANDIDATE behind: every restarted worker then crash-looped."""
    version = copy_version(root, TABULAR, 1, VERSION_DAMAGE[case][0])
    response = client.post("/admin/candidate", json={"model": TABULAR, "version": version, "mode": "shadow"}, headers=ADMIN, timeout=20)
    assert response.status_code == 409, response.text
    assert VERSION_DAMAGE[case][1] in response.json()["error"]
    assert not (root / TABULAR / CANDIDATE_FILE).exists(), "a refused candidate is not left in the registry"
    assert versions_answering(server.url, 6) == {1: 6}


def test_the_watchers_survived_and_follow_a_good_version(client: httpx.Client, server: Server, root: Path) -> None:
    """After every damage above, both workers' watchers still run: a good promotion reaches both without an admin call."""
    good = copy_version(root, TABULAR, 1)
    Registry(root).promote(TABULAR, good)
    waited = wait_until(lambda: versions_answering(server.url, 12) == {good: 12}, timeout=30, every=0.5)
    print(f"\nboth workers on v{good} {waited:.1f}s after the promotion (poll every {POLL_S}s)")
    workers = client.get("/models").json()["workers"]
    assert len(workers) == 2 and all(w["served"][TABULAR] == good and not w["refused"] for w in workers), workers
    problems = [line for line in log_problems(server) if "reload of boston_housing refused" not in line]
    assert not problems, "\n".join(problems[:20])
    assert "Exception in thread" not in server.log()

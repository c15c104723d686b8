"""The registry on real files: versions, atomic publish, CURRENT, HISTORY, rollback, checksums."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.core.registry import (
    CURRENT_FILE,
    HISTORY_FILE,
    METADATA_FILE,
    MODEL_FILE,
    Candidate,
    Registry,
    RegistryError,
    sha256_file,
    validate_metadata,
)

pytestmark = pytest.mark.unit


def write_version(registry: Registry, name: str, payload: bytes = b"onnx-bytes", labels: list[str] | None = None) -> int:
    with registry.new_version(name) as staged:
        (staged.path / MODEL_FILE).write_bytes(payload)
        metadata = {
            "schema_version": 1, "name": name, "version": staged.version, "task": "regression", "created_at": "now",
            "model_file": MODEL_FILE, "sha256": sha256_file(staged.path / MODEL_FILE), "onnx_opset": 17,
            "inputs": [{"name": "x", "dtype": "float32", "shape": [None, 1]}], "outputs": [{"name": "y", "dtype": "float32", "shape": [None, 1]}],
            "labels": labels or [], "preprocessing": {}, "metrics": {}, "parity": {}, "data": {}, "library_versions": {},
            "architecture": {}, "training": {}, "assets": {},
        }  # fmt: skip
        (staged.path / METADATA_FILE).write_text(json.dumps(metadata))
    assert staged.published is not None
    return staged.published.version


def test_versions_are_numbered_and_published_whole(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    assert [write_version(registry, "m") for _ in range(3)] == [1, 2, 3]
    assert registry.versions("m") == [1, 2, 3]
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")], "no staging directory left behind"
    assert registry.current_version("m") is None, "publishing never promotes"


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    with pytest.raises(RuntimeError), registry.new_version("m") as staged:
        (staged.path / MODEL_FILE).write_bytes(b"half")
        raise RuntimeError("export failed")
    assert registry.versions("m") == []
    assert list((tmp_path / "m").iterdir()) == []


def test_promote_rollback_history(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    for _ in range(3):
        write_version(registry, "m")
    assert registry.promote("m", 1) is None
    assert registry.promote("m", 3) == 1
    assert (tmp_path / "m" / CURRENT_FILE).read_text() == "3\n"
    assert registry.rollback("m") == (3, 1), "rollback returns to what was served before, not to v2"
    with pytest.raises(RegistryError, match="oldest"):
        registry.rollback("m")
    assert registry.current_version("m") == 1


def test_rollback_without_history_uses_next_older(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    write_version(registry, "m")
    write_version(registry, "m")
    (tmp_path / "m" / CURRENT_FILE).write_text("2\n")  # as shipped in git, no HISTORY
    assert registry.rollback("m") == (2, 1)


def test_promote_refuses_a_corrupted_version(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    write_version(registry, "m")
    (tmp_path / "m" / "1" / MODEL_FILE).write_bytes(b"tampered")
    with pytest.raises(RegistryError, match="checksum mismatch"):
        registry.promote("m", 1)
    assert registry.current_version("m") is None


def test_metadata_validation_names_problems() -> None:
    problems = validate_metadata({"task": "dreaming", "inputs": [{"name": "x"}]})
    assert any("missing key 'sha256'" in p for p in problems)
    assert any("task should be one of" in p for p in problems)
    assert any("needs name, dtype and shape" in p for p in problems)


def test_published_files_are_readable_by_other_users(tmp_path: Path) -> None:
    """A container running as another user mounts the registry read-only: it must be able to read it."""
    registry = Registry(tmp_path)
    write_version(registry, "m")
    registry.promote("m", 1)
    assert (tmp_path / "m" / "1").stat().st_mode & 0o755 == 0o755
    assert (tmp_path / "m" / CURRENT_FILE).stat().st_mode & 0o644 == 0o644


def test_damaged_registry_entries_raise_registry_error_only(tmp_path: Path) -> None:
    """'²' passes str.isdigit() and fails int(); metadata that is a list, a directory or has `inputs: [1]` (round 3, defect 2)."""
    registry = Registry(tmp_path)
    write_version(registry, "m")
    pointer = tmp_path / "m" / CURRENT_FILE
    for text in ("\u00b2\n", "\u0661\n", "1" * 1000, "-1"):
        pointer.write_text(text)
        with pytest.raises(RegistryError):
            registry.current_version("m")
    pointer.unlink()
    pointer.mkdir()
    with pytest.raises(RegistryError, match="cannot be read"):
        registry.current_version("m")
    (tmp_path / "m" / "\u00b2").mkdir()
    assert registry.versions("m") == [1]
    metadata = tmp_path / "m" / "1" / METADATA_FILE
    good = metadata.read_text()
    for content, words in (("[]", "must be a JSON object"), ('{"a": ', "not valid JSON"), (b"\xff\xfe", "not valid JSON")):
        metadata.write_bytes(content) if isinstance(content, bytes) else metadata.write_text(content)
        with pytest.raises(RegistryError, match=words):
            registry.get("m", 1).verify()
    metadata.write_text(json.dumps(json.loads(good) | {"inputs": [1]}))
    with pytest.raises(RegistryError, match="'inputs' needs name, dtype and shape"):
        registry.get("m", 1).verify()
    metadata.unlink()
    metadata.mkdir()
    with pytest.raises(RegistryError, match="cannot be read"):
        registry.get("m", 1).verify()


def test_a_version_linked_from_outside_the_registry_is_refused(tmp_path: Path) -> None:
    """Round 3, defect 8: a version that is a symlink to a directory outside the root was served."""
    registry = Registry(tmp_path / "registry")
    write_version(registry, "m")
    outside = tmp_path / "elsewhere"
    (tmp_path / "registry" / "m" / "1").rename(outside)
    (tmp_path / "registry" / "m" / "1").symlink_to(outside, target_is_directory=True)
    with pytest.raises(RegistryError, match="outside the registry"):
        registry.get("m", 1)
    linked_root = Registry(tmp_path / "link-to-registry")
    (tmp_path / "link-to-registry").symlink_to(tmp_path / "registry", target_is_directory=True)
    write_version(linked_root, "n")
    assert linked_root.get("n", 1).verify()["name"] == "n", "a symlinked registry root is fine"


def test_promote_repairs_a_damaged_current(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    write_version(registry, "m")
    (tmp_path / "m" / CURRENT_FILE).write_text("\u00b2\n")
    assert registry.promote("m", 1) is None
    assert registry.current_version("m") == 1


def test_a_candidate_is_recorded_once_when_set_twice(tmp_path: Path) -> None:
    """Issue 23, 6: redeploy writes CANDIDATE, then the service it asks writes the same again: HISTORY had every candidate twice."""
    registry = Registry(tmp_path)
    for _ in range(2):
        write_version(registry, "m")
    registry.promote("m", 1)
    registry.set_candidate("m", Candidate(2, "canary", 10.0))
    registry.set_candidate("m", Candidate(2, "canary", 10.0))
    registry.set_candidate("m", Candidate(2, "canary", 20.0))  # a change is recorded
    events = [line.split(maxsplit=1)[1] for line in (tmp_path / "m" / HISTORY_FILE).read_text().splitlines()]
    assert events == ["promote - 1", "candidate canary 10% 2", "candidate canary 20% 2"]


def test_a_promotion_that_changes_the_labels_asks_for_yes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23, 3: a promote run as printed by training into another registry moved the served model to other labels, silently."""
    from training.__main__ import main

    registry = Registry(tmp_path)
    write_version(registry, "m", labels=["cats", "dogs"])
    write_version(registry, "m", b"other", labels=["cats", "dogs", "birds"])
    write_version(registry, "m", b"third", labels=["cats", "dogs"])
    registry.promote("m", 1)
    assert main(["promote", "m", "2", "--registry", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a drop-in for the served v1" in err and "labels ['cats', 'dogs'] -> ['cats', 'dogs', 'birds']" in err and "--yes" in err
    assert registry.current_version("m") == 1, "nothing moved"
    assert main(["promote", "m", "3", "--registry", str(tmp_path)]) == 0, "the same labels and inputs need no --yes"
    assert str(tmp_path) in capsys.readouterr().out, "the output names the registry it changed"
    assert main(["promote", "m", "2", "--registry", str(tmp_path), "--yes"]) == 0
    assert registry.current_version("m") == 2

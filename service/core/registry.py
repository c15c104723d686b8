"""The on-disk model registry: `models/<name>/<version>/` plus a `CURRENT` pointer.

Laid out the way Triton and TF Serving users know it. A version directory is
written under a hidden staging name and renamed into place when complete, so a
reader never sees half a version; after that it is never modified. Which version
is served is a separate, explicit decision: `CURRENT` is rewritten atomically
(write a temporary file, then `os.replace`), and every promotion is appended to
`HISTORY` so that a rollback knows what was served before.

Whatever is on disk, reading the registry raises RegistryError and nothing else: a
CURRENT holding '²' (str.isdigit() says yes, int() says no), a metadata.json that is
a list, a directory or has `inputs: [1]`, a file that cannot be read. A served
version is a directory inside the registry: a version that is a symlink to a
directory elsewhere is refused (see `Registry.get`).

Every file is read with a size bound for its kind (a pointer, metadata.json, HISTORY; a
model file and a preprocessing asset by `FileLimits`, i.e. MODELSERVE_MAX_MODEL_BYTES and
MODELSERVE_MAX_ASSET_BYTES), and only when it is a regular file: an asset named
/dev/zero grew every worker to 17-24 GB until the kernel killed it, and a FIFO as CURRENT
held the reload watcher until something opened it for writing. A version's own files
(model, variants, assets) must lie inside its directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.core.errors import RegistryError
from service.core.files import atomic_write_text

MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"  # the checked INT8 variant beside model.onnx (metadata "variants" -> "int8")
INT8_REFERENCE_FILE = (
    "model.int8.reference.webp"  # inputs the INT8 variant is checked on at load (metadata "variants" -> "int8" -> "reference")
)
METADATA_FILE = "metadata.json"
CURRENT_FILE = "CURRENT"
CANDIDATE_FILE = "CANDIDATE"
HISTORY_FILE = "HISTORY"
CANDIDATE_MODES = ("canary", "shadow")
MAX_CANDIDATE_BYTES = 1024
STAGING_PREFIX = ".staging-"
METADATA_SCHEMA_VERSION = 1
MAX_POINTER_BYTES = 64  # CURRENT holds a version number; more than this is not one
MAX_METADATA_BYTES = 16 * 1024 * 1024  # metadata.json is a few KB; a bigger one is not read
MAX_HISTORY_BYTES = 64 * 1024 * 1024  # HISTORY: about a million promotions; a bigger one is not read
MiB = 1024 * 1024


@dataclass(frozen=True)
class FileLimits:
    """The largest file of each kind a version may have (Settings.file_limits: MODELSERVE_MAX_MODEL_BYTES, _MAX_ASSET_BYTES)."""

    model_bytes: int = 2048 * MiB  # model.onnx and its variants: protobuf's limit for one ONNX file
    asset_bytes: int = 256 * MiB  # vocab.json, scaler.json: a few MB here


@dataclass(frozen=True)
class VersionFiles:
    """A version directory's files as a task reads its assets: by a relative name, regular files inside it, at most max_bytes."""

    path: Path
    max_bytes: int = FileLimits.asset_bytes

    def read(self, name: Any) -> bytes:
        if not isinstance(name, str) or not name or Path(name).is_absolute():
            raise RegistryError(f"asset {name!r}: must be a file name relative to the version directory")
        target = self.path / name
        try:
            if not target.resolve().is_relative_to(self.path.resolve()):
                raise RegistryError(f"asset {name!r} is not inside the version directory; refused")
            return read_limited(target, self.max_bytes)
        except (OSError, RuntimeError) as exc:  # missing, not a regular file, too large, a symlink loop
            raise RegistryError(f"asset {name!r} cannot be read ({getattr(exc, 'strerror', None) or exc})") from exc

    def read_json(self, name: Any) -> Any:
        try:
            return json.loads(self.read(name))
        except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, nested too deep
            raise RegistryError(f"asset {name!r} is not valid JSON: {str(exc)[:200]}") from exc


# Keys every metadata.json must carry (checked by `validate_metadata`).
REQUIRED_METADATA_KEYS: dict[str, type] = {
    "schema_version": int,
    "name": str,
    "version": int,
    "task": str,
    "created_at": str,
    "model_file": str,
    "sha256": str,
    "onnx_opset": int,
    "inputs": list,
    "outputs": list,
    "labels": list,
    "preprocessing": dict,
    "metrics": dict,
    "parity": dict,
    "data": dict,
    "library_versions": dict,
    "architecture": dict,
    "training": dict,
    "assets": dict,
}
TASKS = ("binary_classification", "multiclass_classification", "regression")
MODEL_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
MODEL_NAME_RULE = "lower-case letters, digits, _ and -, starting with a letter or digit, at most 64 characters ([a-z0-9][a-z0-9_-]{0,63})"


@dataclass(frozen=True)
class ModelVersion:
    """One immutable version directory of one model."""

    name: str
    version: int
    path: Path

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    def read_metadata(self) -> dict[str, Any]:
        """metadata.json as a dict; RegistryError when it is missing, unreadable, not JSON or not an object."""
        where = f"{self.name} v{self.version}: {METADATA_FILE}"
        try:
            raw = read_limited(self.path / METADATA_FILE, MAX_METADATA_BYTES)
            metadata = json.loads(raw)
        except FileNotFoundError as exc:
            raise RegistryError(f"{self.name} v{self.version}: no {METADATA_FILE}") from exc
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting too deep
            raise RegistryError(f"{where} is not valid JSON: {str(exc)[:200]}") from exc
        except OSError as exc:  # a directory, unreadable, an I/O error
            raise RegistryError(f"{where} cannot be read ({exc.strerror or exc})") from exc
        if not isinstance(metadata, dict):
            raise RegistryError(f"{where} must be a JSON object, is a JSON {type(metadata).__name__}")
        return metadata

    def verify(self, limits: FileLimits | None = None) -> dict[str, Any]:
        """Check metadata and the model's checksum; return the metadata."""
        metadata = self.read_metadata()
        problems = validate_metadata(metadata)
        if problems:
            raise RegistryError(f"{self.name} v{self.version}: invalid metadata: {'; '.join(problems)[:1000]}")
        if not self.model_path.is_file():
            raise RegistryError(f"{self.name} v{self.version}: {MODEL_FILE} is missing")
        if not self.model_path.resolve().is_relative_to(self.path.resolve()):
            raise RegistryError(f"{self.name} v{self.version}: {MODEL_FILE} is a link out of its version directory; refused")
        actual = self._checksum(self.model_path, (limits or FileLimits()).model_bytes)
        if actual != metadata["sha256"]:
            raise RegistryError(
                f"{self.name} v{self.version}: checksum mismatch for {MODEL_FILE} "
                f"(metadata says {metadata['sha256'][:12]}..., file is {actual[:12]}...)"
            )
        return metadata

    def _checksum(self, path: Path, max_bytes: int) -> str:
        """sha256 of a model file that is a regular file of at most `max_bytes` (MODELSERVE_MAX_MODEL_BYTES)."""
        where = f"{self.name} v{self.version}: {path.name}"
        try:
            info = path.stat()
            if not stat.S_ISREG(info.st_mode):
                raise RegistryError(f"{where} is not a regular file; refused")
            if info.st_size > max_bytes:
                raise RegistryError(f"{where} has {info.st_size:,} bytes, over the limit of {max_bytes:,} (MODELSERVE_MAX_MODEL_BYTES)")
            return sha256_file(path)
        except OSError as exc:
            raise RegistryError(f"{where} cannot be read ({exc.strerror or exc})") from exc

    def variant_path(self, metadata: dict[str, Any], kind: str, limits: FileLimits | None = None) -> Path:
        """The file of a variant that passed its check at export (metadata "variants"), checksum verified.

        RegistryError when there is none, it was refused at export, or its file is missing, outside
        the version directory, too large or not the file that was checked.
        """
        variant = self._variant(metadata, kind)
        return self.checked_file(variant["file"], variant.get("sha256"), f"the {kind} check", limits)

    def variant_reference(self, metadata: dict[str, Any], kind: str) -> tuple[Path, dict[str, Any]]:
        """A variant's reference set (its file, checksum verified, and its metadata block): what the variant is checked on at load."""
        reference = self._variant(metadata, kind).get("reference")
        if not isinstance(reference, dict) or not isinstance(reference.get("file"), str):
            raise RegistryError(f"{self.name} v{self.version}: its {kind} variant has no reference set to check it on this CPU")
        return self.checked_file(reference["file"], reference.get("sha256"), f"the {kind} export"), reference

    def _variant(self, metadata: dict[str, Any], kind: str) -> dict[str, Any]:
        variant = metadata.get("variants", {}).get(kind) if isinstance(metadata.get("variants"), dict) else None
        if not isinstance(variant, dict) or not variant.get("written") or not isinstance(variant.get("file"), str):
            raise RegistryError(f"{self.name} v{self.version} has no {kind} variant that passed its check")
        return variant

    def checked_file(self, name: str, sha256: Any, made_by: str, limits: FileLimits | None = None) -> Path:
        """A file of this version named by its metadata: a regular file inside the version directory, within the size
        limit for models, with the checksum recorded by `made_by`."""
        where = f"{self.name} v{self.version}"
        path = self.path / name
        if not path.is_file() or not path.resolve().is_relative_to(self.path.resolve()):
            raise RegistryError(f"{where}: {name} is missing or not inside the version directory")
        if self._checksum(path, (limits or FileLimits()).model_bytes) != sha256:
            raise RegistryError(f"{where}: checksum mismatch for {name}: not the file that passed {made_by}")
        return path


@dataclass
class StagedVersion:
    """A version being written: `path` is a hidden staging directory until published."""

    name: str
    version: int
    path: Path
    published: ModelVersion | None = None


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def read_limited(path: Path, max_bytes: int) -> bytes:
    """A small regular file's bytes; OSError when it is not a regular file or is larger than `max_bytes`.

    Opened without waiting (a FIFO would wait for a writer) and checked before a byte is
    read: /dev/zero or a device never ends, and a huge file is never read whole.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise OSError("not a regular file")
        if info.st_size > max_bytes:
            raise OSError(f"{info.st_size:,} bytes, larger than {max_bytes:,}")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OSError(f"larger than {max_bytes:,} bytes")
    return data


def validate_metadata(metadata: Any) -> list[str]:
    """Return a list of problems with a metadata document (empty when valid)."""
    if not isinstance(metadata, dict):
        return [f"must be a JSON object, is a {type(metadata).__name__}"]
    problems = []
    for key, kind in REQUIRED_METADATA_KEYS.items():
        if key not in metadata:
            problems.append(f"missing key {key!r}")
        elif not isinstance(metadata[key], kind) or (kind is int and isinstance(metadata[key], bool)):
            problems.append(f"{key!r} should be {kind.__name__}, is {type(metadata[key]).__name__}")
    if metadata.get("task") not in TASKS:
        problems.append(f"task should be one of {TASKS}")
    for io_key in ("inputs", "outputs"):
        specs = metadata.get(io_key)
        if not isinstance(specs, list):
            continue
        if not specs:
            problems.append(f"{io_key!r} is empty")
        for spec in specs:
            if not isinstance(spec, dict) or not {"name", "dtype", "shape"} <= set(spec) or not isinstance(spec["name"], str):
                problems.append(f"each of {io_key!r} needs name, dtype and shape (an object; name a string)")
                break
    return problems


def is_model_name(text: str) -> bool:
    """A name a model may have: it is a directory, a URL path segment and a metrics label, so a plain one."""
    return MODEL_NAME_RE.fullmatch(text) is not None


def interface_changes(served: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What a client of the served version would find changed in `new` (metadata of each): labels, input tensors, kind."""
    changes = []
    if served.get("labels") != new.get("labels"):
        changes.append(f"labels {served.get('labels')} -> {new.get('labels')}")
    inputs = [
        [(i.get("name"), i.get("dtype"), i.get("shape")) for i in m.get("inputs") or [] if isinstance(i, dict)] for m in (served, new)
    ]
    if inputs[0] != inputs[1]:
        changes.append(f"inputs (name, dtype, shape) {inputs[0]} -> {inputs[1]}")
    kinds = [m.get("preprocessing", {}).get("kind") if isinstance(m.get("preprocessing"), dict) else None for m in (served, new)]
    if kinds[0] != kinds[1]:
        changes.append(f"preprocessing {kinds[0]} -> {kinds[1]}")
    return changes


def is_version_name(text: str) -> bool:
    """Only ASCII digits name a version: '12' yes; '²' (a digit to str.isdigit(), not to int()), '١٢', '-1', '' no."""
    return text.isascii() and text.isdigit()


@dataclass(frozen=True)
class Candidate:
    """A version served beside CURRENT for a while: to a share of the traffic (canary) or in its shadow.

    canary: `percent` of the requests are answered by it. shadow: CURRENT answers every
    request and the candidate scores it too, off the response path, for comparison.
    """

    version: int
    mode: str
    percent: float = 0.0

    def check(self, where: str) -> None:
        if self.mode not in CANDIDATE_MODES:
            raise RegistryError(f"{where}: mode must be one of {CANDIDATE_MODES}, got {self.mode!r}")
        if self.mode == "canary" and not 0 < self.percent <= 100:
            raise RegistryError(f"{where}: a canary's percent must be in (0, 100], got {self.percent}")

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "mode": self.mode, "percent": self.percent}


class Registry:
    """Read and change a model registry rooted at `root`."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def model_names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        try:
            return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError as exc:
            raise RegistryError(f"{self.root}: cannot list the registry ({exc.strerror or exc})") from exc

    def versions(self, name: str) -> list[int]:
        model_dir = self.root / name
        if not model_dir.is_dir():
            return []
        try:
            return sorted(int(p.name) for p in model_dir.iterdir() if is_version_name(p.name) and p.is_dir())
        except OSError as exc:
            raise RegistryError(f"{model_dir}: cannot list versions ({exc.strerror or exc})") from exc

    def get(self, name: str, version: int) -> ModelVersion:
        """Version `version` of `name`; RegistryError when it is missing or not a directory inside the registry.

        A version may not be a symlink to a directory outside the registry root: what
        the service runs must be what the registry holds (its checksums, its HISTORY),
        not whatever a link points at today. A symlinked registry root is fine.
        """
        path = self.root / name / str(version)
        if not path.is_dir():
            raise RegistryError(f"{name}: no version {version} (have {self.versions(name) or 'none'})")
        root, real = self.root.resolve(), path.resolve()
        if not real.is_relative_to(root):
            raise RegistryError(f"{name} v{version}: {path} is a link to {real}, outside the registry {root}; refused")
        return ModelVersion(name, version, path)

    def current_version(self, name: str) -> int | None:
        """The version CURRENT names (None when there is no CURRENT); RegistryError when it names none."""
        pointer = self.root / name / CURRENT_FILE
        try:
            text = read_limited(pointer, MAX_POINTER_BYTES).decode("ascii").strip()
        except FileNotFoundError:
            return None
        except UnicodeDecodeError:
            raise RegistryError(f"{pointer}: expected a version number, found non-ASCII bytes") from None
        except OSError as exc:  # a directory, unreadable, too long
            raise RegistryError(f"{pointer}: cannot be read ({exc.strerror or exc})") from exc
        if not is_version_name(text):
            raise RegistryError(f"{pointer}: expected a version number, found {text!r}")
        return int(text)

    def current(self, name: str) -> ModelVersion:
        version = self.current_version(name)
        if version is None:
            raise RegistryError(f"{name}: no {CURRENT_FILE} (nothing promoted yet); versions: {self.versions(name)}")
        return self.get(name, version)

    def candidate(self, name: str) -> Candidate | None:
        """What CANDIDATE says for `name` (None when there is none); RegistryError when it is unusable."""
        pointer = self.root / name / CANDIDATE_FILE
        try:
            data = json.loads(read_limited(pointer, MAX_CANDIDATE_BYTES))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError) as exc:
            raise RegistryError(f"{pointer}: expected a JSON object {{version, mode, percent}} ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("version"), int) or isinstance(data.get("version"), bool):
            raise RegistryError(f"{pointer}: expected a JSON object with an integer version, found {str(data)[:200]}")
        percent = data.get("percent", 0.0)
        if not isinstance(percent, (int, float)) or isinstance(percent, bool):
            raise RegistryError(f"{pointer}: percent must be a number, found {percent!r}")
        candidate = Candidate(data["version"], str(data.get("mode")), float(percent))
        candidate.check(str(pointer))
        return candidate

    def set_candidate(self, name: str, candidate: Candidate) -> None:
        """Point CANDIDATE at a verified version, with its mode (atomic; recorded in HISTORY once: setting what it already says does nothing)."""
        candidate.check(f"{name} candidate")
        self.get(name, candidate.version).verify()
        with contextlib.suppress(RegistryError):
            if self.candidate(name) == candidate:  # redeploy writes it, then asks the service, which would write it again
                return
        atomic_write_text(self.root / name / CANDIDATE_FILE, json.dumps(candidate.to_json()) + "\n")
        self._history(name, f"candidate {candidate.mode} {candidate.percent:g}% {candidate.version}")

    def clear_candidate(self, name: str, why: str = "cleared") -> Candidate | None:
        """Remove CANDIDATE (recorded in HISTORY); return what it said, if anything."""
        try:
            previous = self.candidate(name)
        except RegistryError:
            previous = None
        with contextlib.suppress(FileNotFoundError):
            (self.root / name / CANDIDATE_FILE).unlink()
            self._history(name, f"candidate-{why} {previous.version if previous else '-'}")
        return previous

    def _history(self, name: str, event: str) -> None:
        with open(self.root / name / HISTORY_FILE, "a") as handle:
            handle.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {event}\n")

    def served_models(self) -> list[str]:
        """Models that have a CURRENT pointer, i.e. that a server should load."""
        return [n for n in self.model_names() if (self.root / n / CURRENT_FILE).is_file()]

    @contextlib.contextmanager
    def new_version(self, name: str) -> Iterator[StagedVersion]:
        """Yield a staging directory; publish it as the next version on clean exit.

        The number is provisional: if another writer published it meanwhile, the
        staging directory is renamed to the next free number and metadata.json is
        corrected. After the block, `staged.published` is the final version.
        """
        model_dir = self.root / name
        model_dir.mkdir(parents=True, exist_ok=True)
        staged = StagedVersion(name, self._next_version(name), Path(tempfile.mkdtemp(dir=model_dir, prefix=STAGING_PREFIX)))
        try:
            yield staged
            staged.published = self.get(name, self._publish(name, staged.path))
        except BaseException:
            shutil.rmtree(staged.path, ignore_errors=True)
            raise

    def _next_version(self, name: str) -> int:
        return max(self.versions(name), default=0) + 1

    def _publish(self, name: str, staging: Path) -> int:
        for _ in range(100):
            version = self._next_version(name)
            metadata_path = staging / METADATA_FILE
            if metadata_path.exists():
                metadata = json.loads(metadata_path.read_text())
                if metadata.get("version") != version:
                    metadata["version"] = version
                    metadata_path.write_text(json.dumps(metadata, indent=2) + "\n")
            try:
                staging.chmod(0o755)  # mkdtemp makes it 0700: readable by a service running as another user
                os.rename(staging, self.root / name / str(version))
                return version
            except OSError:
                continue  # lost a race for this number; take the next one
        raise RegistryError(f"{name}: could not allocate a version number")

    def promote(self, name: str, version: int, *, rollback: bool = False) -> int | None:
        """Point CURRENT at `version` after verifying it; return the previous version."""
        self.get(name, version).verify()
        try:
            previous = self.current_version(name)
        except RegistryError:  # a damaged CURRENT must not stop anyone from pointing it at a good version
            previous = None
        atomic_write_text(self.root / name / CURRENT_FILE, f"{version}\n")
        self._history(name, f"{'rollback' if rollback else 'promote'} {previous if previous is not None else '-'} {version}")
        return previous

    def _served_stack(self, name: str) -> list[int]:
        """Replay HISTORY: a promotion pushes a version, a rollback pops one."""
        history = self.root / name / HISTORY_FILE
        stack: list[int] = []
        if not history.is_file():
            return stack
        try:
            lines = read_limited(history, MAX_HISTORY_BYTES).decode(errors="replace").splitlines()
        except OSError as exc:
            raise RegistryError(f"{history}: cannot be read ({exc.strerror or exc})") from exc
        for line in lines:
            parts = line.split()
            if len(parts) != 4 or not is_version_name(parts[3]):
                continue
            if parts[1] == "rollback" and stack:
                stack.pop()
            elif parts[1] == "promote":
                if not stack and is_version_name(parts[2]):
                    stack.append(int(parts[2]))  # what was served before HISTORY began
                stack.append(int(parts[3]))
        return stack

    def previous_version(self, name: str) -> int:
        """The version served before the current one.

        From HISTORY when it records one, else the highest existing version below
        the current (a fresh clone has no history).
        """
        current = self.current_version(name)
        if current is None:
            raise RegistryError(f"{name}: nothing is served, nothing to roll back")
        stack = [v for v in self._served_stack(name) if v in self.versions(name)]
        if len(stack) >= 2 and stack[-1] == current:
            return stack[-2]
        older = [v for v in self.versions(name) if v < current]
        if not older:
            raise RegistryError(f"{name}: v{current} is the oldest version, nothing to roll back to")
        return older[-1]

    def rollback(self, name: str) -> tuple[int, int]:
        """Point CURRENT back at the previous version; return (from, to)."""
        current = self.current_version(name)
        target = self.previous_version(name)
        self.promote(name, target, rollback=True)
        assert current is not None
        return current, target

"""Reference profiles for drift monitoring: written at export, or added to an existing version.

At export (training/publish.py) the new version is loaded from its staging directory
exactly as the service loads it, and service/core/drift.build_profile summarizes the
training inputs and the version's answers on the test split with the service's own
code, into profile.json beside model.onnx.

`python -m training profile MODEL [VERSION] --data PATH` gives a version published
before profiles existed a profile without training again: the version is copied into a
new version (a published version is never modified) with the same model.onnx and the
profile beside it, made from the trainer's data (`profile_data` in the trainer module).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Sequence
from typing import Any

from service.core.config import Settings
from service.core.drift import PROFILE_FILE, build_profile
from service.core.registry import METADATA_FILE, ModelVersion, Registry, sha256_file
from service.core.runtime import load_model

CPU = ["CPUExecutionProvider"]


def write_profile(version: ModelVersion, inputs: Sequence[Any], held_out: Sequence[Any], source: str = "") -> dict[str, Any]:
    """Profile `version` (a staged or published directory) on its data; write profile.json; return the metadata record."""
    # Answers as the CPU provider serves them: the checked INT8 variant where there is one (its answers are less
    # confident than fp32's: on the shipped image model's test photos that alone is a JS distance of 0.14 on the top score).
    model = load_model(version, CPU)  # the task its metadata names
    data = model.metadata.get("data", {})
    source = source or f"the data this version was trained on (fingerprint {str(data.get('fingerprint', '?'))[:16]})"
    print(f"[profile] {version.name}: {len(inputs):,} training inputs, {len(held_out):,} held-out items", flush=True)
    profile = build_profile(model, inputs, held_out, Settings(), source)
    path = profile.write(version.path)
    names = [f.name for f in profile.features]
    print(f"[profile] {PROFILE_FILE}: {len(names)} features ({', '.join(names)}), {path.stat().st_size / 1e3:.1f} KB", flush=True)
    return {"file": PROFILE_FILE, "sha256": sha256_file(path), "features": names, "sources": profile.sources}


def add_profile(
    registry: Registry, source: ModelVersion, inputs: Sequence[Any], held_out: Sequence[Any], data: dict[str, Any]
) -> ModelVersion:
    """A new version: `source`'s files and metadata with a reference profile made from `data` (the trainer's loader's record)."""
    metadata = source.verify()
    trained_on = metadata.get("data", {}).get("fingerprint")
    same = bool(trained_on) and trained_on == data.get("fingerprint")
    if not same:
        print(
            f"[profile] warning: this data's fingerprint ({str(data.get('fingerprint'))[:16]}) is not the one v{source.version} "
            f"was trained on ({str(trained_on)[:16]}): the profile describes this data, not the training data",
            flush=True,
        )
    with registry.new_version(source.name) as staged:
        for item in source.path.iterdir():
            if item.is_file() and item.name not in (METADATA_FILE, PROFILE_FILE):
                shutil.copy2(item, staged.path / item.name)
        metadata |= {"version": staged.version, "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        metadata["derived_from"] = {
            "version": source.version,
            "sha256": metadata["sha256"],
            "change": f"{PROFILE_FILE} added; model.onnx unchanged",
        }
        (staged.path / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        files = [f.get("path") for f in data.get("files", []) if isinstance(f, dict)]
        described = f"{', '.join(map(str, files)) or 'the given data'} ({data.get('split', 'its split')}); " + (
            "the data this version was trained on (same fingerprint)" if same else "NOT the data this version was trained on"
        )
        metadata["profile"] = write_profile(ModelVersion(source.name, staged.version, staged.path), inputs, held_out, described)
        metadata["profile"]["same_data_as_training"] = same
        (staged.path / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    assert staged.published is not None
    staged.published.verify()
    return staged.published

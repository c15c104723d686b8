"""Checks every trained version in the training tests shares: schema, checksums, plots, parity, no promotion, a drift profile."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from service.core.drift import read_profile
from service.core.registry import Registry, validate_metadata
from service.core.runtime import load_model

SCHEMA_EXTRAS = ("model_bytes", "plots")


def trained_version(registry_root: Path, name: str) -> tuple[Registry, dict]:
    registry = Registry(registry_root)
    assert registry.versions(name) == [1]
    version = registry.get(name, 1)
    metadata = version.verify()  # schema + sha256 of model.onnx
    assert validate_metadata(metadata) == []
    for key in SCHEMA_EXTRAS:
        assert key in metadata
    for plot in metadata["plots"]:
        assert (version.path / plot).stat().st_size > 5_000, f"{plot} is a real PNG"
    assert metadata["parity"]["samples"] >= 100 and metadata["parity"]["max_abs_diff"] <= 1e-4
    assert metadata["onnx_opset"] <= 18
    assert metadata["data"]["fingerprint"] and metadata["data"]["samples"]["train"] > 0
    assert registry.current_version(name) is None, "training must not change what is served"
    profile = read_profile(
        version.path, load_model(version, ["CPUExecutionProvider"]).task.assets_kind
    )  # the drift reference, made at export
    assert metadata["profile"]["features"] == [f.name for f in profile.features] and metadata["profile"]["sha256"]
    assert {f.role for f in profile.features} == {"input", "output"} and all(f.count > 0 for f in profile.features)
    return registry, metadata


def onnx_session(registry: Registry, name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(registry.get(name, 1).model_path), providers=["CPUExecutionProvider"])

"""Vendor the part of KServe's InferenceService CRD schema that tests/test_k8s_manifests.py checks against.

    git clone https://github.com/kserve/kserve && git -C kserve checkout v0.20.0
    python tests/schemas/vendor_kserve.py kserve/config/crd/full/serving.kserve.io_inferenceservices.yaml v0.20.0 COMMIT

The full CRD is 1.9 MB (every framework predictor, the transformer and the explainer embed a
whole container spec). Kept: the v1beta1 openAPIV3Schema with `spec.predictor` as KServe
ships it, minus the framework predictors (sklearn, onnx, triton, ... and `model`) and the
multi-node `workerSpec`, which a custom-container predictor does not use; `status`,
`spec.transformer`, `spec.explainer` and `spec.canary` are dropped, and so are the `description` texts. A manifest that uses a dropped field
fails the check: re-vendor with it kept.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

OUT = Path(__file__).with_name("kserve-inferenceservice-v1beta1.json")
DROPPED_PREDICTOR = (
    "huggingface", "lightgbm", "model", "onnx", "paddle", "pmml", "pytorch", "sklearn", "tensorflow", "triton", "xgboost", "workerSpec",
)  # fmt: skip


def without_descriptions(node: object) -> object:
    if isinstance(node, dict):
        return {k: without_descriptions(v) for k, v in node.items() if k != "description" or not isinstance(v, str)}
    if isinstance(node, list):
        return [without_descriptions(v) for v in node]
    return node


def main(crd_path: str, version: str, commit: str) -> None:
    crd = yaml.safe_load(Path(crd_path).read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    schema = served["schema"]["openAPIV3Schema"]
    schema["properties"].pop("status")
    spec = schema["properties"]["spec"]
    for name in ("transformer", "explainer", "canary"):
        spec["properties"].pop(name)
    for name in DROPPED_PREDICTOR:
        spec["properties"]["predictor"]["properties"].pop(name)
    vendored = {
        "source": f"https://github.com/kserve/kserve/blob/{version}/config/crd/full/serving.kserve.io_inferenceservices.yaml",
        "kserve_version": version,
        "commit": commit,
        "crd": crd["metadata"]["name"],
        "group": crd["spec"]["group"],
        "version": "v1beta1",
        "pruned": ["status", "spec.transformer", "spec.explainer", "spec.canary", *(f"spec.predictor.{n}" for n in DROPPED_PREDICTOR)],
        "openAPIV3Schema": without_descriptions(schema),
    }
    OUT.write_text(json.dumps(vendored, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:4])

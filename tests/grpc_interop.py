"""Triton's and KServe's own gRPC clients against a running modelserve; run by tests/test_grpc.py from their own venvs.

Neither installs beside the pinned stack (tritonclient[grpc] 2.73.0 and kserve 0.21.0 want
protobuf<7; TensorFlow, onnx and our stubs run protobuf 7), so each runs from a venv of its
own (tests/test_grpc.py makes and caches them) and this file imports nothing from the project:

    python tests/grpc_interop.py triton|kserve HOST:PORT CASES.json

CASES.json is a list of requests: {"model", "input", "datatype", "shape", "data", "raw",
"outputs", "id"}; BYTES elements are base64 in it, numbers a flat list. The client sends
each one as it would (Triton's client always sends raw_input_contents; KServe's sends typed
contents unless "raw"), and prints one JSON object: the client's generated messages (their wire
contract: field numbers, types, repetition; to compare with ours), its view of health, metadata and readiness, and per request either its outputs (name -> datatype, shape, flat data; BYTES
as UTF-8 text, or base64 where it is not) and id, or the error's status code and message.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from typing import Any

import numpy as np

NUMPY = {"FP32": np.float32, "UINT8": np.uint8, "INT64": np.int64, "FP64": np.float64, "INT32": np.int32, "BOOL": np.bool_}


def array(case: dict[str, Any]) -> np.ndarray:
    if case["datatype"] == "BYTES":
        return np.array([base64.b64decode(e) for e in case["data"]], dtype=object).reshape(case["shape"])
    return np.array(case["data"], dtype=NUMPY[case["datatype"]]).reshape(case["shape"])


def plain(values: np.ndarray, datatype: str) -> dict[str, Any]:
    flat = values.reshape(-1).tolist()
    if datatype == "BYTES":
        flat = [_text(v) for v in flat]
    return {"datatype": datatype, "shape": list(values.shape), "data": flat}


def describe(file: Any) -> dict[str, Any]:
    """A proto file's wire contract: every message's fields (number, type, label, message type) and every method's types."""
    messages: dict[str, Any] = {}

    def walk(message: Any) -> None:
        messages[message.full_name] = {
            f.name: [f.number, f.type, _repeated(f), f.message_type.full_name if f.message_type else ""] for f in message.fields
        }
        for nested in message.nested_types:
            walk(nested)

    for message in file.message_types_by_name.values():
        walk(message)
    methods = {
        f"{service.full_name}/{m.name}": [m.input_type.full_name, m.output_type.full_name]
        for service in file.services_by_name.values()
        for m in service.methods
    }
    return {"messages": messages, "methods": methods}


def _repeated(field: Any) -> bool:
    """protobuf 7 has only `is_repeated`, older ones `label` (3: repeated) too."""
    return field.is_repeated if hasattr(field, "is_repeated") else field.label == 3


def _text(value: bytes | str) -> str:
    if isinstance(value, str):
        return value
    try:
        return value.decode()
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(value).decode()


# ---------------------------------------------------------------- Triton: tritonclient[grpc]


def triton(address: str, cases: list[dict[str, Any]]) -> dict[str, Any]:
    import tritonclient.grpc as client_module
    from tritonclient.grpc import service_pb2
    from tritonclient.utils import InferenceServerException

    client = client_module.InferenceServerClient(address)
    report: dict[str, Any] = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "server": client.get_server_metadata(as_json=True),
        "index": client.get_model_repository_index(as_json=True).get("models", []),
        "metadata": {},
        "model_ready": {},
        "cases": [],
        "proto": describe(service_pb2.DESCRIPTOR),
    }
    for name in [m["name"] for m in report["index"]] + ["no_such_model"]:
        report["model_ready"][name] = client.is_model_ready(name)
        try:
            report["metadata"][name] = client.get_model_metadata(name, as_json=True)
        except InferenceServerException as exc:
            report["metadata"][name] = {"error": {"code": str(exc.status()), "message": exc.message()}}
    for case in cases:
        tensor = client_module.InferInput(case["input"], case["shape"], case["datatype"])
        tensor.set_data_from_numpy(array(case))
        outputs = [client_module.InferRequestedOutput(n) for n in case.get("outputs", [])] or None
        try:
            result = client.infer(case["model"], [tensor], outputs=outputs, request_id=case.get("id", ""))
        except InferenceServerException as exc:
            report["cases"].append({"error": {"code": str(exc.status()), "message": exc.message()}})
            continue
        response = result.get_response()
        outs = {o.name: plain(result.as_numpy(o.name), o.datatype) for o in response.outputs}
        report["cases"].append({"id": response.id, "model_version": response.model_version, "outputs": outs})
    client.close()
    return report


# ---------------------------------------------------------------- KServe: kserve.InferenceGRPCClient


async def kserve(address: str, cases: list[dict[str, Any]]) -> dict[str, Any]:
    import grpc
    from kserve import InferenceGRPCClient, InferInput, InferRequest
    from kserve.protocol.grpc import grpc_predict_v2_pb2

    client = InferenceGRPCClient(address, timeout=60, retries=0)
    report: dict[str, Any] = {
        "live": await client.is_server_live(),
        "ready": await client.is_server_ready(),
        "model_ready": {},
        "cases": [],
        "proto": describe(grpc_predict_v2_pb2.DESCRIPTOR),
    }
    for name in {c["model"] for c in cases} | {"no_such_model"}:
        report["model_ready"][name] = await client.is_model_ready(name)
    for case in cases:
        values = array(case)
        if case["datatype"] == "BYTES" and not case["raw"]:  # as bytes_contents: images are not UTF-8 text
            tensor = InferInput(case["input"], case["shape"], "BYTES", data=values.reshape(-1).tolist())
        else:
            tensor = InferInput(case["input"], case["shape"], case["datatype"])
            tensor.set_data_from_numpy(values, binary_data=case["raw"])
        request = InferRequest(case["model"], [tensor], request_id=case.get("id"))
        try:
            response = await client.infer(request)
        except grpc.RpcError as exc:
            report["cases"].append({"error": {"code": str(exc.code()), "message": exc.details()}})
            continue
        outs = {o.name: plain(o.as_numpy(), o.datatype) for o in response.outputs}
        report["cases"].append({"id": response.id, "model_version": response.model_version, "outputs": outs})
    await client.close()
    return report


def main() -> int:
    which, address, cases_path = sys.argv[1:4]
    with open(cases_path) as handle:
        cases = json.load(handle)
    report = triton(address, cases) if which == "triton" else asyncio.run(kserve(address, cases))
    json.dump(report, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

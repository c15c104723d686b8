"""The Open Inference Protocol over gRPC on a real `bentoml serve`: two workers sharing the port, three clients.

grpcio's own stubs (generated from service/grpc/inference.proto) drive it in-process:
health (grpc.health.v1 and the protocol's), metadata, the repository index, and inference
on every model with raw and with typed contents, whose answers must equal the REST route's
for the same tensors (labels equal, numbers within 1e-6). Hostile messages each get their
status code and a message naming the input and item, an oversize one RESOURCE_EXHAUSTED,
overload RESOURCE_EXHAUSTED with a retry hint, and the server serves on without an error
in its log. Triton's tritonclient[grpc] and the KServe SDK's InferenceGRPCClient, which
want protobuf<7, run from venvs of their own (made once and cached) through
tests/grpc_interop.py and must see the same answers.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.launch import ROOT, Server
from service.core.config import Settings
from service.core.errors import Overloaded
from service.core.preprocessing import ImageSpec, decode_image
from service.grpc import generate
from service.grpc import inference_pb2 as pb
from service.grpc import inference_pb2_grpc as pb_grpc
from service.grpc.server import SERVICE_NAME, InferenceServicer, rpc
from tests.grpc_interop import describe
from tests.servers import ServerSpec
from tests.shards import CLIENT_VENVS
from tests.test_request_path import IMAGE_PIXELS, big_png

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parent / "fixtures"
CAT, DOG = (FIXTURES / "cat.jpg").read_bytes(), (FIXTURES / "dog.jpg").read_bytes()
TEXTS = [
    "One of the best films I have seen in years: moving, funny and beautifully acted. I loved it.",
    "A boring, badly written mess. The acting was awful and I wanted my two hours back.",
    "Ein großartiger Film — wonderful, 最高!",
]
HOUSES = [
    [0.06, 0.0, 2.46, 0, 0.488, 7.8, 53.6, 3.2, 3, 193, 17.8, 392.6, 3.0],
    [15.0, 0.0, 18.1, 0, 0.7, 5.0, 95.0, 1.5, 24, 666, 20.2, 300.0, 30.0],
]
MAX_ITEMS = 8
MAX_REQUEST_BYTES = 3_000_000
WORKERS = 2
SERVER_ENV = {
    "MODELSERVE_WORKERS": str(WORKERS),  # both bind the gRPC port (SO_REUSEPORT)
    "MODELSERVE_MAX_ITEMS": str(MAX_ITEMS),
    "MODELSERVE_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
    # as tests/test_admission.py: the bound admits one heaviest request (two phone-sized photos) at a time
    "MODELSERVE_MAX_IMAGE_PIXELS": str(IMAGE_PIXELS),
    "MODELSERVE_MAX_REQUEST_PIXELS": str(2 * IMAGE_PIXELS),
    "MODELSERVE_MAX_PENDING_PIXELS": str(2 * IMAGE_PIXELS),
    "MODELSERVE_MAX_JSON_VALUES": str(400_000),  # the REST side of a comparison sends two photos' pixels as JSON numbers
}
SERVER = ServerSpec(env=SERVER_ENV, grpc=True)
# The other projects' clients, each in a venv of its own (their protobuf pins are not ours), cached by requirement under
# CLIENT_VENVS (tests/shards.py counts the minute a clean machine spends making them).
CLIENTS = {"triton": "tritonclient[grpc]==2.73.0", "kserve": "kserve==0.21.0"}
NUMPY = {"BYTES": object, "UINT8": np.uint8, "FP32": np.float32}
CONTENTS = {"BYTES": "bytes_contents", "UINT8": "uint_contents", "FP32": "fp32_contents", "FP64": "fp64_contents"}


@pytest.fixture(scope="module")
def channel(server: Server) -> Iterator[grpc.Channel]:
    assert server.grpc_address is not None
    with grpc.insecure_channel(server.grpc_address, options=[("grpc.max_receive_message_length", 16 * 2**20)]) as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
        yield channel


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def served(client: httpx.Client) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in client.get("/models").json()["models"]}


# ---------------------------------------------------------------- tensors: sent as a client would, read back independently


def tensor_cases(served: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, np.ndarray]]:
    """(model, input, datatype, array): every model and every input it takes."""
    spec = ImageSpec.from_json(served["image_classifier"]["preprocessing"])
    return [
        ("image_classifier", "images", "BYTES", np.array([CAT, DOG], dtype=object)),
        ("image_classifier", "pixels", "UINT8", np.stack([decode_image(CAT, spec), decode_image(DOG, spec)])),
        ("imdb_sentiment", "texts", "BYTES", np.array([t.encode() for t in TEXTS], dtype=object)),
        ("boston_housing", "rows", "FP32", np.array(HOUSES, dtype=np.float32)),
    ]


def raw_bytes(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(e)) + e for e in array.reshape(-1))
    return array.astype(np.dtype(NUMPY[datatype]).newbyteorder("<")).tobytes()


def infer_request(model: str, name: str, datatype: str, array: np.ndarray, raw: bool, **fields: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, **fields)
    tensor = request.inputs.add(name=name, datatype=datatype, shape=array.shape)
    if raw:
        request.raw_input_contents.append(raw_bytes(array, datatype))
    else:
        getattr(tensor.contents, CONTENTS[datatype]).extend(array.reshape(-1).tolist())
    return request


def outputs_of(reply: pb.ModelInferResponse) -> dict[str, tuple[list[int], list[Any]]]:
    """name -> (shape, flat values; BYTES as str), from raw_output_contents or the typed contents."""
    out = {}
    for index, output in enumerate(reply.outputs):
        if reply.raw_output_contents:
            data = reply.raw_output_contents[index]
            if output.datatype == "BYTES":
                values, offset = [], 0
                while offset < len(data):
                    (length,) = struct.unpack_from("<I", data, offset)
                    values.append(data[offset + 4 : offset + 4 + length].decode())
                    offset += 4 + length
            else:
                values = np.frombuffer(data, dtype=np.dtype(NUMPY[output.datatype]).newbyteorder("<")).tolist()
        else:
            values = list(getattr(output.contents, CONTENTS[output.datatype]))
            values = [v.decode() for v in values] if output.datatype == "BYTES" else values
        out[output.name] = (list(output.shape), values)
    return out


def rest_outputs(client: httpx.Client, model: str, name: str, datatype: str, array: np.ndarray) -> dict[str, tuple[list[int], list[Any]]]:
    """The REST route's answer (v2 JSON) for the same tensor."""
    if datatype == "BYTES" and name == "images":
        data: Any = [base64.b64encode(e).decode() for e in array]
    elif datatype == "BYTES":
        data = [e.decode() for e in array]
    else:
        data = array.reshape(-1).tolist()
    body = {"inputs": [{"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}]}
    response = client.post(f"/v2/models/{model}/infer", json=body)
    assert response.status_code == 200, response.text
    return {o["name"]: (o["shape"], o["data"]) for o in response.json()["outputs"]}


def assert_same_answers(got: dict[str, tuple[list[int], list[Any]]], expected: dict[str, tuple[list[int], list[Any]]]) -> None:
    assert list(got) == list(expected)
    for name, (shape, values) in expected.items():
        assert got[name][0] == shape, name
        if values and isinstance(values[0], str):
            assert got[name][1] == values, name
        else:
            np.testing.assert_allclose(got[name][1], values, atol=1e-6, rtol=0, err_msg=name)


# ---------------------------------------------------------------- the stubs and the status codes, in-process


def test_checked_in_stubs_are_what_the_proto_generates(tmp_path: Path) -> None:
    for path in generate.generate(tmp_path):
        checked_in = ROOT / "service" / "grpc" / path.name
        assert path.read_bytes() == checked_in.read_bytes(), f"{checked_in} is stale: run `python -m service.grpc.generate`"


def test_the_servicer_answers_every_rpc_of_the_proto() -> None:
    """The generated base class answers UNIMPLEMENTED by raising (grpcio-tools' own text, checked in as generated);
    the service's servicer overrides every rpc, so none of those bodies is ever served."""
    rpcs = [name for name in vars(pb_grpc.GRPCInferenceServiceServicer) if not name.startswith("_")]
    assert len(rpcs) == 7 and all(
        getattr(InferenceServicer, rpc) is not getattr(pb_grpc.GRPCInferenceServiceServicer, rpc) for rpc in rpcs
    ), rpcs


class Failing(InferenceServicer):
    """The real servicer's error handling (the `rpc` wrapper) around methods that fail as the executor can."""

    @rpc
    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        await asyncio.sleep(5)  # past the 1 s request timeout below
        return pb.ServerLiveResponse(live=True)

    @rpc
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        raise Overloaded("busy: retry shortly")

    @rpc
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext) -> pb.RepositoryIndexResponse:
        raise RuntimeError("a bug, with a secret path /etc/x in its message")


def test_timeouts_overload_bugs_and_loading_get_their_status_codes() -> None:
    """In-process, on a real grpc.aio server: no BentoML service instance exists here, as while a worker loads its models."""

    async def calls() -> dict[str, tuple[grpc.StatusCode, str, dict[str, str]]]:
        server = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(Failing(Settings(request_timeout_s=1)), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        results = {}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for name, call in [
                ("timeout", stub.ServerLive(pb.ServerLiveRequest())),
                ("overload", stub.ServerMetadata(pb.ServerMetadataRequest())),
                ("bug", stub.RepositoryIndex(pb.RepositoryIndexRequest())),
                ("loading", stub.ServerReady(pb.ServerReadyRequest())),
                ("loading infer", stub.ModelInfer(pb.ModelInferRequest(model_name="imdb_sentiment"))),
            ]:
                try:
                    await call
                    results[name] = (grpc.StatusCode.OK, "", {})
                except grpc.aio.AioRpcError as exc:
                    results[name] = (exc.code(), exc.details() or "", dict(exc.trailing_metadata() or ()))
        await server.stop(0)
        return results

    results = asyncio.run(calls())
    assert results["timeout"][:2] == (grpc.StatusCode.DEADLINE_EXCEEDED, "no answer within 1 s (MODELSERVE_REQUEST_TIMEOUT_S)")
    code, message, trailers = results["overload"]
    assert (code, message) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "busy: retry shortly")
    assert trailers["retry-after"] == "1" and trailers["grpc-retry-pushback-ms"] == "1000"
    assert results["bug"][:2] == (grpc.StatusCode.INTERNAL, "RepositoryIndex failed on the server (logged there)")
    assert results["loading"][:2] == (grpc.StatusCode.UNAVAILABLE, "models are still loading")
    assert results["loading infer"][:2] == (grpc.StatusCode.UNAVAILABLE, "models are still loading")


# ---------------------------------------------------------------- health, metadata, listing


def test_every_worker_serves_the_port_and_health_says_serving(channel: grpc.Channel, server: Server) -> None:
    deadline = time.monotonic() + 120  # /readyz answered from one worker; the other may still be loading its models
    while server.log().count("Open Inference Protocol over gRPC on") < WORKERS and time.monotonic() < deadline:
        time.sleep(0.5)
    assert server.log().count("Open Inference Protocol over gRPC on") == WORKERS
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as raised:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    for _ in range(2 * WORKERS):  # new connections, each to whichever worker the kernel picks: every one answers
        with grpc.insecure_channel(server.grpc_address) as fresh:
            assert pb_grpc.GRPCInferenceServiceStub(fresh).ServerReady(pb.ServerReadyRequest(), timeout=30).ready


def test_metadata_and_index_equal_the_rest_routes(stub: pb_grpc.GRPCInferenceServiceStub, client: httpx.Client) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest()).live and stub.ServerReady(pb.ServerReadyRequest()).ready
    metadata = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert (metadata.name, metadata.version) == (client.get("/v2").json()["name"], client.get("/v2").json()["version"])
    index = [{"name": m.name, "version": m.version, "state": m.state} for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models]
    assert index == client.post("/v2/repository/index").json() and len(index) == 3
    for entry in index:
        rest = client.get(f"/v2/models/{entry['name']}").json()
        for version in ("", entry["version"]):
            got = stub.ModelMetadata(pb.ModelMetadataRequest(name=entry["name"], version=version))
            tensors = lambda ts: [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in ts]  # noqa: E731
            assert {
                "name": got.name,
                "versions": list(got.versions),
                "platform": got.platform,
                "inputs": tensors(got.inputs),
                "outputs": tensors(got.outputs),
            } == rest
            assert stub.ModelReady(pb.ModelReadyRequest(name=entry["name"], version=version)).ready


def test_models_and_versions_not_served(stub: pb_grpc.GRPCInferenceServiceStub, served: dict) -> None:
    assert not stub.ModelReady(pb.ModelReadyRequest(name="no_such_model")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="imdb_sentiment", version="999")).ready
    calls = [
        lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="no_such_model")),
        lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="imdb_sentiment", version="999")),
        lambda: stub.ModelInfer(infer_request("no_such_model", "texts", "BYTES", np.array([b"fine"], dtype=object), False)),
        lambda: stub.ModelInfer(
            infer_request("imdb_sentiment", "texts", "BYTES", np.array([b"fine"], dtype=object), False, model_version="999")
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        assert "not served" in raised.value.details()


# ---------------------------------------------------------------- inference: the REST route's answers


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
@pytest.mark.parametrize("case", range(4), ids=["images", "pixels", "texts", "rows"])
def test_answers_equal_the_rest_route(
    stub: pb_grpc.GRPCInferenceServiceStub, client: httpx.Client, served: dict, case: int, raw: bool
) -> None:
    model, name, datatype, array = tensor_cases(served)[case]
    reply = stub.ModelInfer(infer_request(model, name, datatype, array, raw, id=f"{name}-{raw}"))
    assert (reply.model_name, reply.model_version, reply.id) == (model, str(served[model]["version"]), f"{name}-{raw}")
    assert bool(reply.raw_output_contents) == raw, "outputs come back raw when the inputs came raw, typed otherwise"
    assert_same_answers(outputs_of(reply), rest_outputs(client, model, name, datatype, array))


def test_outputs_asked_for_in_order_and_raw_when_asked(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = infer_request("image_classifier", "images", "BYTES", np.array([CAT], dtype=object), False)
    request.outputs.add(name="probabilities")
    request.outputs.add(name="label")
    request.parameters["binary_data_output"].bool_param = True
    reply = stub.ModelInfer(request)
    assert [o.name for o in reply.outputs] == ["probabilities", "label"] and len(reply.raw_output_contents) == 2
    outputs = outputs_of(reply)
    assert outputs["label"] == ([1], ["cats"]) and outputs["probabilities"][0] == [1, 2]


# ---------------------------------------------------------------- hostile messages: their status, and the server serves on


def bad(model: str, name: str, datatype: str, shape: list[int], **contents: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    for field, values in contents.items():
        if field == "raw":
            request.raw_input_contents.extend(values)
        else:
            getattr(tensor.contents, field).extend(values)
    return request


def two_inputs() -> pb.ModelInferRequest:
    request = bad("image_classifier", "images", "BYTES", [1], bytes_contents=[CAT])
    request.inputs.add(name="pixels", datatype="UINT8", shape=[1, 224, 224, 3]).contents.uint_contents.extend([0] * 224 * 224 * 3)
    return request


def raw_and_typed() -> pb.ModelInferRequest:
    request = bad("imdb_sentiment", "texts", "BYTES", [1], bytes_contents=[b"fine"])
    request.raw_input_contents.append(struct.pack("<I", 4) + b"fine")
    return request


def unknown_output() -> pb.ModelInferRequest:
    request = bad("imdb_sentiment", "texts", "BYTES", [1], bytes_contents=[b"fine"])
    request.outputs.add(name="probability")
    return request


def text_parameter() -> pb.ModelInferRequest:
    request = bad("imdb_sentiment", "texts", "BYTES", [1], bytes_contents=[b"fine"])
    request.parameters["binary_data_output"].string_param = "yes"
    return request


ROW = [float(v) for v in HOUSES[0]]
INVALID = grpc.StatusCode.INVALID_ARGUMENT
# fmt: off
HOSTILE = [
    ("wrong datatype", bad("imdb_sentiment", "texts", "FP32", [1], fp32_contents=[1.0]), "input texts must be BYTES, got FP32"),
    ("unsupported datatype", bad("imdb_sentiment", "texts", "STRING", [1], bytes_contents=[b"x"]), "unsupported datatype 'STRING'"),
    ("wrong shape", bad("boston_housing", "rows", "FP32", [1, 12], fp32_contents=ROW[:12]), "must have shape [-1, 13]"),
    ("negative shape", bad("imdb_sentiment", "texts", "BYTES", [-1], bytes_contents=[b"x"]), "shape must be non-negative"),
    ("huge shape", bad("imdb_sentiment", "texts", "BYTES", [2**62], bytes_contents=[b"x"]), "has 4611686018427387904 texts; send 1 to 8"),
    ("huge row shape", bad("boston_housing", "rows", "FP32", [1, 2**40], fp32_contents=ROW), "must have shape [-1, 13]"),
    ("huge raw shape", bad("image_classifier", "pixels", "UINT8", [2**20, 224, 224, 3], raw=[bytes(10)]), "send 1 to 8"),
    ("typed count mismatch", bad("boston_housing", "rows", "FP32", [2, 13], fp32_contents=ROW), "FP32 [2, 13] has 26 elements, contents.fp32_contents has 13"),
    ("raw count mismatch", bad("boston_housing", "rows", "FP32", [1, 13], raw=[bytes(50)]), "takes 52 bytes, raw_input_contents[0]'s length is 50"),
    ("bytes count mismatch", bad("imdb_sentiment", "texts", "BYTES", [2], raw=[struct.pack("<I", 4) + b"fine"]), "ends before element 1 of 2"),
    ("element past its data", bad("imdb_sentiment", "texts", "BYTES", [1], raw=[struct.pack("<I", 99) + b"short"]), "99 bytes announced"),
    ("contents of another type", bad("image_classifier", "pixels", "UINT8", [1, 224, 224, 3], fp32_contents=[0.0]), "UINT8 elements go in contents.uint_contents, got fp32_contents"),
    ("pixel out of range", bad("image_classifier", "pixels", "UINT8", [1, 224, 224, 3], uint_contents=[300] * (224 * 224 * 3)), "must lie in [0, 255] for UINT8"),
    ("raw entries per input", bad("imdb_sentiment", "texts", "BYTES", [1], raw=[b"", b""]), "raw_input_contents has 2 entries for 1 inputs"),
    ("raw and typed", raw_and_typed(), "send contents or raw_input_contents, not both"),
    ("no inputs", pb.ModelInferRequest(model_name="imdb_sentiment"), "the request has no inputs"),
    ("unknown input", bad("imdb_sentiment", "text", "BYTES", [1], bytes_contents=[b"fine"]), "unknown input 'text'"),
    ("two alternatives", two_inputs(), "send one input"),
    ("not an image", bad("image_classifier", "images", "BYTES", [2], bytes_contents=[CAT, b"hello, not a picture"]), "images[1]: is not a supported image"),
    ("truncated jpeg", bad("image_classifier", "images", "BYTES", [2], bytes_contents=[CAT, DOG[: len(DOG) // 2]]), "images[1]: is truncated or corrupt"),
    ("text not utf-8", bad("imdb_sentiment", "texts", "BYTES", [1], bytes_contents=[b"\xff\xfe bad"]), "texts[0]: is not valid UTF-8"),
    ("empty text", bad("imdb_sentiment", "texts", "BYTES", [2], bytes_contents=[b"fine", b""]), "texts[1]: is empty"),
    ("nan feature", bad("boston_housing", "rows", "FP32", [1, 13], fp32_contents=[float("nan"), *ROW[1:]]), "rows[0]: feature CRIM is nan"),
    ("too many items", bad("imdb_sentiment", "texts", "BYTES", [MAX_ITEMS + 1], bytes_contents=[b"fine"] * (MAX_ITEMS + 1)), "send 1 to 8"),
    ("unknown output", unknown_output(), "unknown output 'probability'"),
    ("parameter of the wrong type", text_parameter(), "binary_data_output must be a bool_param"),
]
# fmt: on


@pytest.mark.parametrize(("case", "request_message", "message"), HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_messages_get_invalid_argument_naming_the_input(
    stub: pb_grpc.GRPCInferenceServiceStub, case: str, request_message: pb.ModelInferRequest, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(request_message, timeout=60)
    assert raised.value.code() == INVALID, raised.value.details()
    assert message in raised.value.details()


def test_a_message_over_the_size_limit_is_resource_exhausted(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    huge = bad("imdb_sentiment", "texts", "BYTES", [1], bytes_contents=[b"x" * MAX_REQUEST_BYTES])
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(huge, timeout=60)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, raised.value.details()


def test_work_beyond_the_pending_bound_is_resource_exhausted(server: Server) -> None:
    """As tests/test_admission.py over REST: the bound admits one heaviest request, twelve at once on one connection meet it."""
    png = big_png()
    request = bad("image_classifier", "images", "BYTES", [2], bytes_contents=[png, png])
    with grpc.insecure_channel(server.grpc_address) as channel:
        call = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        futures = [call.future(request, timeout=120) for _ in range(12)]
        outcomes = [f.exception() for f in futures]
        refused = [e for e in outcomes if e is not None]
        assert refused and len(refused) < len(outcomes), "twelve heaviest requests at once, the bound admitting one"
        for error in refused:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry shortly" in error.details()
            assert dict(error.trailing_metadata())["retry-after"] == "1"
        assert call(request, timeout=120).outputs, "alone again, a request is admitted"


def test_server_serves_on_and_logged_no_error(stub: pb_grpc.GRPCInferenceServiceStub, client: httpx.Client, server: Server) -> None:
    reply = stub.ModelInfer(infer_request("imdb_sentiment", "texts", "BYTES", np.array([TEXTS[0].encode()], dtype=object), False))
    assert outputs_of(reply)["label"] == ([1], ["positive"])
    assert client.get("/readyz").status_code == 200
    log = server.log()
    assert "Traceback" not in log and " ERROR " not in log and "[ERROR]" not in log, log[-3000:]


# ---------------------------------------------------------------- Triton's and KServe's own clients, from their own venvs


def client_python(which: str) -> Path:
    """The python of a cached venv with the client installed (made on first use: pip from the package index)."""
    requirement = CLIENTS[which]
    venv = CLIENT_VENVS / f"{which}-{hashlib.sha256(requirement.encode()).hexdigest()[:12]}"
    python = venv / "bin" / "python"
    if python.exists():
        return python
    building = venv.with_name(f"{venv.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(building)], check=True, timeout=300)
    install = subprocess.run(
        [str(building / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", requirement],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert install.returncode == 0, f"pip install {requirement} failed:\n{install.stdout[-2000:]}{install.stderr[-3000:]}"
    try:
        building.rename(venv)
    except OSError:  # another test process made it first
        shutil.rmtree(building, ignore_errors=True)
    return python


def interop_cases(served: dict[str, dict[str, Any]], raw: bool) -> list[dict[str, Any]]:
    cases = []
    for model, name, datatype, array in tensor_cases(served):
        data = [base64.b64encode(e).decode() for e in array] if datatype == "BYTES" else array.reshape(-1).tolist()
        cases.append(
            {"model": model, "input": name, "datatype": datatype, "shape": list(array.shape), "data": data, "raw": raw, "id": name}
        )
    wrong = {"model": "imdb_sentiment", "input": "texts", "datatype": "FP32", "shape": [1], "data": [1.0], "raw": raw, "id": "bad"}
    return [*cases, wrong]


def run_client(which: str, server: Server, cases: list[dict[str, Any]], tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(cases))
    script = Path(__file__).with_name("grpc_interop.py")
    done = subprocess.run(
        [str(client_python(which)), str(script), which, str(server.grpc_address), str(path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


PROTOCOL_METHODS = {
    f"{SERVICE_NAME}/{m}" for m in ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer")
}


def assert_same_wire(theirs: dict[str, Any]) -> None:
    """Where both have a message, a field both name has their number, type and repetition, and a field only one names
    uses a number the other leaves free (KServe's InferParameter lacks the spec's double and uint64 parameters); where
    both have a method, its types are theirs, and the protocol's six methods are in both (their others, Triton's
    statistics or KServe's model loading, are UNIMPLEMENTED here)."""
    ours = describe(pb.DESCRIPTOR)  # the same description, made of our descriptor here
    shared = ours["messages"].keys() & theirs["messages"].keys()
    assert {"inference.ModelInferRequest", "inference.ModelInferResponse", "inference.InferTensorContents"} <= shared
    for name in shared:
        mine, other = ours["messages"][name], theirs["messages"][name]
        for field in mine.keys() & other.keys():
            assert mine[field] == other[field], f"{name}.{field}"
        only_mine = {mine[f][0] for f in mine.keys() - other.keys()}
        only_theirs = {other[f][0] for f in other.keys() - mine.keys()}
        assert not only_mine & {spec[0] for spec in other.values()} and not only_theirs & {spec[0] for spec in mine.values()}, name
    for method in ours["methods"].keys() & theirs["methods"].keys():
        assert ours["methods"][method] == theirs["methods"][method], method
    assert ours["methods"].keys() & theirs["methods"].keys() >= PROTOCOL_METHODS


def assert_client_answers(report: dict[str, Any], cases: list[dict[str, Any]], client: httpx.Client, served: dict) -> None:
    assert report["live"] and report["ready"]
    assert report["model_ready"] == {**dict.fromkeys(served, True), "no_such_model": False}
    for case, result, (model, name, datatype, array) in zip(cases, report["cases"], tensor_cases(served)):
        assert result["id"] == case["id"] and result["model_version"] == str(served[model]["version"])
        got = {n: (o["shape"], o["data"]) for n, o in result["outputs"].items()}
        expected = rest_outputs(client, model, name, datatype, array)
        assert_same_answers({n: got[n] for n in expected}, expected)
    error = report["cases"][-1]["error"]
    assert error["code"] == "StatusCode.INVALID_ARGUMENT" and "input texts must be BYTES, got FP32" in error["message"]


@pytest.mark.timeout(1800)  # the first run installs tritonclient[grpc] into its venv
def test_tritonclient_grpc(server: Server, client: httpx.Client, served: dict, tmp_path: Path) -> None:
    cases = interop_cases(served, raw=True)  # Triton's client always sends raw_input_contents
    report = run_client("triton", server, cases, tmp_path)
    assert_same_wire(report["proto"])
    assert_client_answers(report, cases, client, served)
    assert report["server"]["name"] == "modelserve"
    assert [(m["name"], m["version"], m["state"]) for m in report["index"]] == [
        (m["name"], m["version"], m["state"]) for m in client.post("/v2/repository/index").json()
    ]
    for name in served:
        metadata = report["metadata"][name]  # protobuf's JSON: int64 as strings
        for tensor in (*metadata["inputs"], *metadata["outputs"]):
            tensor["shape"] = [int(d) for d in tensor["shape"]]
        assert metadata == client.get(f"/v2/models/{name}").json()
    assert report["metadata"]["no_such_model"]["error"]["code"] == "StatusCode.NOT_FOUND"


@pytest.mark.timeout(1800)  # the first run installs kserve into its venv
@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_kserve_grpc_client(server: Server, client: httpx.Client, served: dict, tmp_path: Path, raw: bool) -> None:
    cases = interop_cases(served, raw=raw)
    report = run_client("kserve", server, cases, tmp_path)
    assert_same_wire(report["proto"])
    assert_client_answers(report, cases, client, served)

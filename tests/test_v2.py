"""The Open Inference Protocol (KServe v2 REST) on a real `bentoml serve`, spoken by Triton's own client.

tritonclient[http] is a client nobody here wrote: health, metadata, the repository index and
inference on every model, with binary and with JSON tensors, whose answers must equal the
friendly endpoints' for the same inputs. Malformed tensors are sent raw (httpx), each a 400
with the protocol's {"error": ...} body, and the server keeps serving. The server runs with
batching on, so v2 requests go through the same batcher as the friendly ones, and a bad item
in one request must not fail another. The last test hot-reloads a model and watches
/v2/models/{name} follow it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from benchmarks.launch import ROOT, Server
from service.core.preprocessing import ImageSpec, decode_image
from service.core.registry import Registry
from tests.servers import ServerSpec

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
SERVER = ServerSpec(
    env={
        "MODELSERVE_BATCHING": "on",  # v2 and friendly requests share the batcher, as on a GPU
        "MODELSERVE_MAX_ITEMS": str(MAX_ITEMS),
        "MODELSERVE_MAX_REQUEST_BYTES": str(3_000_000),
        "MODELSERVE_MAX_REQUEST_PIXELS": str(160_000),  # the cat and the dog together (153,280 pixels), not three photos
        "MODELSERVE_RELOAD_POLL_S": "1",
        "MODELSERVE_MAX_JSON_VALUES": str(400_000),  # the cat's and the dog's pixels as JSON numbers: 301,056 values, over the default
    },
    # A copy of the shipped registry: the last test publishes a version into it.
    registry=lambda root: shutil.copytree(ROOT / "models", root, dirs_exist_ok=True),
)
RELOADED = "imdb_sentiment"


@pytest.fixture(scope="module")
def registry_root(server_registry: Path) -> Path:
    return server_registry


@pytest.fixture(scope="module")
def tc(server: Server) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="module")
def served(client: httpx.Client) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in client.get("/models").json()["models"]}


def bytes_input(name: str, elements: list[bytes] | list[str], binary: bool) -> triton.InferInput:
    tensor = triton.InferInput(name, [len(elements)], "BYTES")
    tensor.set_data_from_numpy(np.array(elements, dtype=object), binary_data=binary)
    return tensor


def array_input(name: str, array: np.ndarray, datatype: str, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def outputs(names: list[str], binary: bool) -> list[triton.InferRequestedOutput]:
    return [triton.InferRequestedOutput(name, binary_data=binary) for name in names]


# ---------------------------------------------------------------- health, metadata, listing


def test_health_and_server_metadata(tc: triton.InferenceServerClient, client: httpx.Client) -> None:
    assert tc.is_server_live() and tc.is_server_ready()
    metadata = tc.get_server_metadata()
    assert metadata["name"] == "modelserve" and "binary_tensor_data" in metadata["extensions"]
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}


def test_listed_models_are_exactly_the_served_ones(tc: triton.InferenceServerClient, served: dict, registry_root: Path) -> None:
    index = {m["name"]: m for m in tc.get_model_repository_index()}
    registry = Registry(registry_root)
    assert set(index) == set(served) == set(registry.served_models())
    for name, entry in index.items():
        assert entry == {"name": name, "version": str(registry.current_version(name)), "state": "READY"}


def expected_tensors(model: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """What the README promises per model kind, sized from the version's own metadata (GET /models)."""
    pre, labels = model["preprocessing"], model["labels"]
    if model["kind"] == "image_classification":
        inputs = [("images", "BYTES", [-1]), ("pixels", "UINT8", [-1, pre["height"], pre["width"], 3])]
        outs = [("label", "BYTES", [-1]), ("score", "FP32", [-1]), ("probabilities", "FP32", [-1, len(labels)])]
    elif model["kind"] == "text_classification":
        inputs, outs = [("texts", "BYTES", [-1])], [("label", "BYTES", [-1]), ("probability_positive", "FP32", [-1])]
    else:
        inputs, outs = [("rows", "FP32", [-1, len(pre["features"])])], [("price", "FP32", [-1])]
    as_dicts = lambda ts: [{"name": n, "datatype": d, "shape": s} for n, d, s in ts]  # noqa: E731
    return as_dicts(inputs), as_dicts(outs)


@pytest.mark.parametrize("name", ["image_classifier", "imdb_sentiment", "boston_housing"])
def test_model_metadata_declares_the_tensors(tc: triton.InferenceServerClient, served: dict, name: str) -> None:
    version = str(served[name]["version"])
    metadata = tc.get_model_metadata(name)
    inputs, outs = expected_tensors(served[name])
    assert metadata == {"name": name, "versions": [version], "platform": "onnxruntime_onnx", "inputs": inputs, "outputs": outs}
    assert tc.get_model_metadata(name, version) == metadata
    assert tc.is_model_ready(name) and tc.is_model_ready(name, version)


def test_a_version_or_model_not_served_is_404(tc: triton.InferenceServerClient, client: httpx.Client) -> None:
    assert not tc.is_model_ready("imdb_sentiment", "99") and not tc.is_model_ready("no_such_model")
    for path in ("/v2/models/imdb_sentiment/versions/99", "/v2/models/no_such_model", "/v2/models/imdb_sentiment/versions/99/ready"):
        response = client.get(path)
        assert response.status_code == 404 and set(response.json()) == {"error"}, (path, response.text)
    with pytest.raises(InferenceServerException, match="version '99' of imdb_sentiment is not served") as raised:
        tc.infer("imdb_sentiment", [bytes_input("texts", [b"fine"], True)], model_version="99")
    assert raised.value.status() == "404"


# ---------------------------------------------------------------- inference equals the friendly API


def assert_image_answers(result: triton.InferResult, friendly: list[dict]) -> None:
    labels = [label.decode() if isinstance(label, bytes) else label for label in result.as_numpy("label")]
    assert labels == [a["label"] for a in friendly] == ["cats", "dogs"]
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (2, 2)
    expected = np.array([list(a["probabilities"].values()) for a in friendly])
    np.testing.assert_allclose(probabilities, expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(result.as_numpy("score"), [a["score"] for a in friendly], atol=1e-6, rtol=0)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_images_as_encoded_bytes_equal_classify_image(tc: triton.InferenceServerClient, client: httpx.Client, binary: bool) -> None:
    friendly = client.post("/classify_image", files=[("images", ("cat.jpg", CAT)), ("images", ("dog.jpg", DOG))]).json()
    elements = [CAT, DOG] if binary else [base64.b64encode(CAT).decode(), base64.b64encode(DOG).decode()]  # JSON: base64
    result = tc.infer("image_classifier", [bytes_input("images", elements, binary)], request_id=f"img-{binary}")
    assert_image_answers(result, friendly)
    response = result.get_response()
    assert response["id"] == f"img-{binary}" and response["model_name"] == "image_classifier"
    assert response["model_version"] == str(friendly[0]["version"])


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_images_as_pixels_equal_classify_image(tc: triton.InferenceServerClient, client: httpx.Client, served: dict, binary: bool) -> None:
    """Pixels decoded by the client with the service's own decoder: the same answers as the JPEGs sent to /classify_image."""
    spec = ImageSpec.from_json(served["image_classifier"]["preprocessing"])
    pixels = np.stack([decode_image(CAT, spec), decode_image(DOG, spec)])
    friendly = client.post("/classify_image", files=[("images", ("cat.jpg", CAT)), ("images", ("dog.jpg", DOG))]).json()
    result = tc.infer(
        "image_classifier", [array_input("pixels", pixels, "UINT8", binary)], outputs=outputs(["label", "score", "probabilities"], binary)
    )
    assert_image_answers(result, friendly)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_texts_equal_sentiment(tc: triton.InferenceServerClient, client: httpx.Client, binary: bool) -> None:
    friendly = client.post("/sentiment", json={"texts": TEXTS}).json()
    elements = [t.encode() for t in TEXTS]
    result = tc.infer(
        "imdb_sentiment", [bytes_input("texts", elements, binary)], outputs=outputs(["label", "probability_positive"], binary)
    )
    labels = [label.decode() if isinstance(label, bytes) else label for label in result.as_numpy("label")]
    assert labels == [a["label"] for a in friendly] and labels[:2] == ["positive", "negative"]
    np.testing.assert_allclose(result.as_numpy("probability_positive"), [a["probability_positive"] for a in friendly], atol=1e-6, rtol=0)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_rows_equal_predict_price(tc: triton.InferenceServerClient, client: httpx.Client, binary: bool) -> None:
    rows = np.array(HOUSES, dtype=np.float32)
    friendly = client.post("/predict_price", json={"rows": rows.tolist()}).json()  # the same FP32 numbers
    result = tc.infer("boston_housing", [array_input("rows", rows, "FP32", binary)], outputs=outputs(["price"], binary))
    prices = result.as_numpy("price")
    assert prices.dtype == np.float32 and prices.shape == (2,)
    np.testing.assert_allclose(prices, [a["price"] for a in friendly], atol=1e-6, rtol=0)
    assert prices[0] > prices[1] + 10


def test_outputs_asked_for_come_back_in_order_each_as_asked(tc: triton.InferenceServerClient) -> None:
    asked = [triton.InferRequestedOutput("probabilities", binary_data=True), triton.InferRequestedOutput("label", binary_data=False)]
    result = tc.infer("image_classifier", [bytes_input("images", [CAT], True)], outputs=asked)
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["probabilities", "label"]
    assert response["outputs"][0]["parameters"] == {"binary_data_size": 8} and "data" not in response["outputs"][0]
    assert response["outputs"][1]["data"] == ["cats"]


def test_plain_json_as_in_the_readme(client: httpx.Client, served: dict) -> None:
    """curl-style: nested `data`, a version in the path, request parameters, no binary anywhere."""
    version = served["boston_housing"]["version"]
    body = {
        "id": "42",
        "parameters": {"note": "ignored"},
        "inputs": [{"name": "rows", "shape": [2, 13], "datatype": "FP32", "data": HOUSES}],
    }
    response = client.post(f"/v2/models/boston_housing/versions/{version}/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json" and "inference-header-content-length" not in response.headers
    answer = response.json()
    assert answer["id"] == "42" and answer["model_version"] == str(version)
    assert answer["outputs"][0]["name"] == "price" and answer["outputs"][0]["shape"] == [2] and len(answer["outputs"][0]["data"]) == 2


# ---------------------------------------------------------------- bad tensors: 400, and the server keeps serving


def framed(header: dict[str, Any], *chunks: bytes) -> dict[str, Any]:
    """httpx arguments for a request with binary tensor data (what tritonclient sends)."""
    head = json.dumps(header).encode()
    return {"content": head + b"".join(chunks), "headers": {"Inference-Header-Content-Length": str(len(head))}}


def bytes_section(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def json_input(name: str, datatype: str, shape: list[int], data: Any) -> dict[str, Any]:
    return {"json": {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}}


def binary_input(name: str, datatype: str, shape: list[int], data: bytes, size: int | None = None) -> dict[str, Any]:
    tensor = {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": len(data) if size is None else size}}
    return framed({"inputs": [tensor]}, data)


ROW = [float(v) for v in HOUSES[0]]
# fmt: off
BAD_TENSORS = [
    ("wrong datatype", "boston_housing", json_input("rows", "FP64", [1, 13], ROW), "input rows must be FP32, got FP64"),
    ("wrong shape", "boston_housing", json_input("rows", "FP32", [1, 12], ROW[:12]), "must have shape [-1, 13]"),
    ("wrong pixel size", "image_classifier", binary_input("pixels", "UINT8", [1, 8, 8, 3], bytes(192)), "must have shape [-1, 224, 224, 3]"),
    ("missing input", "imdb_sentiment", {"json": {"inputs": []}}, "`inputs` must be a non-empty list"),
    ("unknown input", "imdb_sentiment", json_input("text", "BYTES", [1], ["fine"]), "unknown input 'text'"),
    ("two alternatives", "image_classifier", {"json": {"inputs": [
        {"name": "images", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(CAT).decode()]},
        {"name": "pixels", "datatype": "UINT8", "shape": [1, 224, 224, 3], "data": [0] * (224 * 224 * 3)}]}}, "send one input"),
    ("not an image", "image_classifier", binary_input("images", "BYTES", [1], bytes_section(b"hello, not a picture")), "images[0]: is not a supported image"),
    ("not base64", "image_classifier", json_input("images", "BYTES", [1], ["%%%"]), "images[0]: is not valid base64"),
    ("truncated jpeg", "image_classifier", binary_input("images", "BYTES", [2], bytes_section(CAT, DOG[: len(DOG) // 2])), "images[1]: is truncated or corrupt"),
    ("over the pixel budget", "image_classifier", binary_input("images", "BYTES", [3], bytes_section(CAT, DOG, CAT)), "229,760 pixels in all"),
    ("empty image element", "image_classifier", binary_input("images", "BYTES", [1], bytes_section(b"")), "images[0]: is empty (0 bytes)"),
    ("empty text element", "imdb_sentiment", json_input("texts", "BYTES", [2], ["fine", ""]), "texts[1]: is empty"),
    ("text not utf-8", "imdb_sentiment", binary_input("texts", "BYTES", [1], bytes_section(b"\xff\xfe bad")), "texts[0]: is not valid UTF-8"),
    ("count mismatch json", "boston_housing", json_input("rows", "FP32", [2, 13], ROW), "[2, 13] has 26 elements, `data` has 13"),
    ("count mismatch binary", "boston_housing", binary_input("rows", "FP32", [1, 13], bytes(50)), "takes 52 bytes, binary_data_size is 50"),
    ("bytes count mismatch", "imdb_sentiment", binary_input("texts", "BYTES", [2], bytes_section(b"fine")), "ends before element 1 of 2"),
    ("element past its data", "imdb_sentiment", binary_input("texts", "BYTES", [1], struct.pack("<I", 99) + b"short"), "99 bytes announced"),
    ("truncated binary section", "imdb_sentiment", binary_input("texts", "BYTES", [1], bytes_section(b"fine"), size=64), "runs past the end"),
    ("binary without header", "imdb_sentiment", {"content": json.dumps({"inputs": [
        {"name": "texts", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 8}}]}).encode() + bytes_section(b"fine")},
        "needs an Inference-Header-Content-Length header"),
    ("strings for numbers", "boston_housing", json_input("rows", "FP32", [1, 13], ["1"] * 13), "must hold numbers for FP32"),
    ("pixel out of range", "image_classifier", json_input("pixels", "UINT8", [1, 224, 224, 3], [256] * (224 * 224 * 3)), "must lie in [0, 255]"),
    ("nan feature", "boston_housing", binary_input("rows", "FP32", [1, 13], np.array([np.nan, *ROW[1:]], "<f4").tobytes()), "rows[0]: feature CRIM is nan"),
    ("too many items", "imdb_sentiment", json_input("texts", "BYTES", [MAX_ITEMS + 1], ["fine"] * (MAX_ITEMS + 1)), "send 1 to 8"),
    ("no items", "imdb_sentiment", json_input("texts", "BYTES", [0], []), "has 0 texts"),
    ("unknown output", "imdb_sentiment", {"json": {"inputs": [{"name": "texts", "datatype": "BYTES", "shape": [1], "data": ["fine"]}],
        "outputs": [{"name": "probability"}]}}, "unknown output 'probability'"),
    ("invalid json", "imdb_sentiment", {"content": b'{"inputs": [', "headers": {"content-type": "application/json"}}, "invalid JSON"),
    ("not an object", "imdb_sentiment", {"json": [1, 2]}, "must be a JSON object"),
    ("numeric id", "imdb_sentiment", {"json": {"id": 7, "inputs": [{"name": "texts", "datatype": "BYTES", "shape": [1], "data": ["ok"]}]}}, "`id` must be a string"),
    ("bad header length", "imdb_sentiment", {"content": b"{}", "headers": {"Inference-Header-Content-Length": "99"}}, "body has only 2 bytes"),
]
# fmt: on


@pytest.mark.parametrize(("case", "model", "request_args", "message"), BAD_TENSORS, ids=[c[0] for c in BAD_TENSORS])
def test_bad_tensors_get_400_with_the_protocols_error(
    client: httpx.Client, case: str, model: str, request_args: dict, message: str
) -> None:
    response = client.post(f"/v2/models/{model}/infer", **request_args)
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"error"} and message in body["error"], body


def test_wrong_content_type_and_huge_body(client: httpx.Client) -> None:
    plain = client.post("/v2/models/imdb_sentiment/infer", content=b"{}", headers={"content-type": "text/plain"})
    assert plain.status_code == 415 and "application/octet-stream" in plain.json()["error"]
    huge = client.post("/v2/models/imdb_sentiment/infer", content=b"x" * 3_000_001, headers={"content-type": "application/json"})
    assert huge.status_code == 413 and set(huge.json()) == {"error"}
    gzip = client.post("/v2/models/imdb_sentiment/infer", content=b"..", headers={"content-encoding": "gzip"})
    assert gzip.status_code == 415 and "uncompressed" in gzip.json()["error"]


def test_tritonclient_sees_the_error_message(tc: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match=r"texts\[0\]: is empty") as raised:
        tc.infer("imdb_sentiment", [bytes_input("texts", [b"   "], True)])
    assert raised.value.status() == "400"


def test_a_bad_item_never_fails_another_request_in_the_batch(server: Server) -> None:
    """Good and bad requests at once, v2 and friendly, through the batcher: every good one answered, every bad one a 400."""

    async def burst() -> list[tuple[str, int, Any]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:

            async def one(i: int) -> tuple[str, int, Any]:
                kind = ["good v2", "bad v2", "good friendly", "bad friendly"][i % 4]
                text = TEXTS[i % 2] if kind.startswith("good") else ""
                if kind.endswith("v2"):
                    response = await client.post("/v2/models/imdb_sentiment/infer", **json_input("texts", "BYTES", [2], [TEXTS[0], text]))
                else:
                    response = await client.post("/sentiment", json={"texts": [TEXTS[0], text]})
                return kind, response.status_code, response.json()

            return await asyncio.gather(*(one(i) for i in range(48)))

    for kind, status, body in asyncio.run(burst()):
        assert status == (200 if kind.startswith("good") else 400), (kind, body)
        if kind == "good v2":
            assert next(o for o in body["outputs"] if o["name"] == "label")["data"][0] == "positive"


def test_server_still_serves_and_logged_no_error(tc: triton.InferenceServerClient, server: Server) -> None:
    assert tc.is_server_ready()
    result = tc.infer("imdb_sentiment", [bytes_input("texts", [TEXTS[0].encode()], True)])
    assert result.as_numpy("label")[0] == b"positive"
    log = server.log()
    assert "Traceback" not in log and " ERROR " not in log and "[ERROR]" not in log, log[-3000:]


# ---------------------------------------------------------------- hot reload (last: it changes the served version)


def test_hot_reload_changes_what_v2_reports(tc: triton.InferenceServerClient, client: httpx.Client, registry_root: Path) -> None:
    registry = Registry(registry_root)
    old = registry.current_version(RELOADED)
    assert old is not None
    with registry.new_version(RELOADED) as staged:
        for path in registry.get(RELOADED, old).path.iterdir():
            shutil.copy2(path, staged.path / path.name)
    assert staged.published is not None
    new = staged.published.version
    registry.promote(RELOADED, new)
    deadline = time.monotonic() + 60
    while tc.get_model_metadata(RELOADED)["versions"] != [str(new)]:
        assert time.monotonic() < deadline, "the CURRENT watcher did not reload"
        time.sleep(0.25)
    assert not tc.is_model_ready(RELOADED, str(old)) and tc.is_model_ready(RELOADED, str(new))
    assert {m["name"]: m["version"] for m in tc.get_model_repository_index()}[RELOADED] == str(new)
    result = tc.infer(RELOADED, [bytes_input("texts", [TEXTS[0].encode()], True)], model_version=str(new))
    assert result.get_response()["model_version"] == str(new)
    stale = client.post(f"/v2/models/{RELOADED}/versions/{old}/infer", **json_input("texts", "BYTES", [1], ["fine"]))
    assert stale.status_code == 404 and f"version {new} is" in stale.json()["error"]

"""The v2 protocol's wire format (service/http/v2_codec.py) in this process: Triton's own client encodes and decodes.

tritonclient builds the request bodies (JSON, and JSON + binary tensor data) and parses
the responses, so the codec is checked against an implementation nobody here wrote;
every malformed body is an InputError whose message names what is wrong.
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton

from service.core.errors import InputError
from service.core.tasks.tensors import Tensor
from service.http.v2_codec import HEADER_LENGTH, RequestInput, encode_response, parse_request, to_array

pytestmark = pytest.mark.unit


def triton_body(*inputs: tuple[str, np.ndarray, str, bool], **options: Any) -> tuple[bytes, str | None]:
    """A request body as tritonclient sends it: (name, data, datatype, as binary) per input; with its header length."""
    infer_inputs = []
    for name, data, datatype, binary in inputs:
        tensor = triton.InferInput(name, list(data.shape), datatype)
        tensor.set_data_from_numpy(data, binary_data=binary)
        infer_inputs.append(tensor)
    body, json_size = triton.InferenceServerClient.generate_request_body(infer_inputs, **options)
    return body, None if json_size is None else str(json_size)


def arrays(body: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    return {tensor.name: to_array(tensor) for tensor in parse_request(body, header_length).inputs}


# ---------------------------------------------------------------- requests tritonclient sends


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_numeric_tensors_arrive_as_sent(binary: bool) -> None:
    rows = np.arange(26, dtype=np.float32).reshape(2, 13) / 7
    pixels = np.random.default_rng(0).integers(0, 256, (1, 4, 5, 3), dtype=np.uint8)
    counts = np.array([[-3, 2**40]], dtype=np.int64)
    body, length = triton_body(("rows", rows, "FP32", binary), ("pixels", pixels, "UINT8", binary), ("counts", counts, "INT64", binary))
    got = arrays(body, length)
    assert (length is not None) == binary, "only binary data needs the header length"
    for name, sent in (("rows", rows), ("pixels", pixels), ("counts", counts)):
        assert got[name].dtype == sent.dtype and got[name].shape == sent.shape
        np.testing.assert_array_equal(got[name], sent)


def test_bytes_tensors_arrive_as_bytes_in_binary_and_as_text_in_json() -> None:
    texts = np.array(["a fine film", "ünïcode ☃", ""], dtype=object)
    body, length = triton_body(("texts", texts, "BYTES", True))
    assert arrays(body, length)["texts"].tolist() == [t.encode() for t in texts]
    body, length = triton_body(("texts", texts, "BYTES", False))
    assert arrays(body, length)["texts"].tolist() == list(texts)


def test_request_id_and_requested_outputs_are_read() -> None:
    rows = np.zeros((1, 13), np.float32)
    outputs = [triton.InferRequestedOutput("price", binary_data=True), triton.InferRequestedOutput("label", binary_data=False)]
    body, length = triton_body(("rows", rows, "FP32", False), outputs=outputs, request_id="req-7")
    request = parse_request(body, length)
    assert request.id == "req-7"
    assert request.outputs == {"price": True, "label": False}
    assert parse_request(*triton_body(("rows", rows, "FP32", False))).outputs is None, "none named: every output"


# ---------------------------------------------------------------- responses tritonclient reads

TENSORS = [Tensor("label", "BYTES", (-1,)), Tensor("score", "FP32", (-1,)), Tensor("probabilities", "FP32", (-1, 2))]
ANSWERS = {
    "label": np.array([b"cats", b"dogs"], dtype=object),
    "score": np.array([0.75, 0.5], np.float32),
    "probabilities": np.array([[0.75, 0.25], [0.5, 0.5]], np.float32),
}


def infer_request(body: dict[str, Any]) -> Any:
    raw = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}], **body}).encode()
    return parse_request(raw, None)


@pytest.mark.parametrize(
    "asked",
    [
        {},
        {"parameters": {"binary_data_output": True}},
        {"outputs": [{"name": "score", "parameters": {"binary_data": True}}, {"name": "label"}]},
    ],
    ids=["json", "all-binary", "two-of-three"],
)
def test_responses_decode_with_tritonclient(asked: dict[str, Any]) -> None:
    request = infer_request({"id": "r1", **asked})
    content, headers = encode_response("image_classifier", 2, request, TENSORS, ANSWERS)
    length = headers.get(HEADER_LENGTH)
    result = triton.InferenceServerClient.parse_response_body(content, header_length=int(length) if length else None)
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("image_classifier", "2", "r1")
    names = [o["name"] for o in response["outputs"]]
    assert names == ([o["name"] for o in asked["outputs"]] if "outputs" in asked else ["label", "score", "probabilities"])
    for name in names:
        got = result.as_numpy(name)
        if got.dtype == object:  # BYTES: tritonclient gives bytes from binary data, str from JSON
            got = np.array([g if isinstance(g, bytes) else g.encode() for g in got], dtype=object)
        np.testing.assert_array_equal(got, ANSWERS[name])
    binary = [o["name"] for o in response["outputs"] if "binary_data_size" in o.get("parameters", {})]
    assert headers["content-type"] == ("application/octet-stream" if binary else "application/json")


# ---------------------------------------------------------------- malformed requests: 400s that say what is wrong


def body_of(header: Any, binary: bytes = b"") -> tuple[bytes, str | None]:
    head = json.dumps(header).encode()
    return head + binary, str(len(head)) if binary else None


FP32_INPUT = {"name": "rows", "datatype": "FP32", "shape": [1, 2]}
PARSE_ERRORS = {
    "not JSON": ((b"{nope", None), "invalid JSON"),
    "binary without header length": ((b'{"inputs": []}\x00\x01', None), "needs an Inference-Header-Content-Length header"),
    "not UTF-8": ((b'{"inputs": ["\xff"]}', None), "invalid JSON"),
    "not an object": (body_of([1]), "must be a JSON object with `inputs`"),
    "id not a string": (body_of({"id": 3, "inputs": [FP32_INPUT | {"data": [1, 2]}]}), "`id` must be a string, got int"),
    "no inputs": (body_of({"inputs": []}), "`inputs` must be a non-empty list"),
    "input without name": (body_of({"inputs": [{"datatype": "FP32"}]}), "inputs[0] must be an object with a `name`"),
    "unknown datatype": (body_of({"inputs": [FP32_INPUT | {"datatype": "FP8", "data": []}]}), "unsupported datatype 'FP8'"),
    "negative shape": (body_of({"inputs": [FP32_INPUT | {"shape": [1, -2], "data": []}]}), "`shape` must be a list of non-negative"),
    "neither data nor binary": (body_of({"inputs": [FP32_INPUT]}), "no `data` and no binary_data_size"),
    "binary size not a count": (
        body_of({"inputs": [FP32_INPUT | {"parameters": {"binary_data_size": "8"}}]}, b"\x00" * 8),
        "binary_data_size must be a byte count",
    ),
    "binary runs past the end": (
        body_of({"inputs": [FP32_INPUT | {"parameters": {"binary_data_size": 16}}]}, b"\x00" * 8),
        "binary_data_size 16 runs past the end of the binary data, 8 bytes left",
    ),
    "binary left over": (
        body_of({"inputs": [FP32_INPUT | {"parameters": {"binary_data_size": 8}}]}, b"\x00" * 12),
        "4 bytes of binary data beyond",
    ),
    "an input twice": (body_of({"inputs": [FP32_INPUT | {"data": [1, 2]}] * 2}), "given more than once"),
    "parameters not an object": (body_of({"inputs": [FP32_INPUT | {"data": [1, 2]}], "parameters": []}), "`parameters` must be an object"),
    "flag not a boolean": (
        body_of({"inputs": [FP32_INPUT | {"data": [1, 2]}], "parameters": {"binary_data_output": "yes"}}),
        "binary_data_output must be true or false, got 'yes'",
    ),
    "outputs without names": (body_of({"inputs": [FP32_INPUT | {"data": [1, 2]}], "outputs": [{"nom": "x"}]}), "`outputs` must be a list"),
    "header length not a number": ((b"{}", "twelve"), "must be a byte count, got 'twelve'"),
    "header length past the body": ((b"{}", "10"), "Inference-Header-Content-Length is 10 but the body has only 2 bytes"),
}


@pytest.mark.parametrize("case", list(PARSE_ERRORS))
def test_malformed_requests_are_refused_with_what_is_wrong(case: str) -> None:
    (body, length), message = PARSE_ERRORS[case]
    with pytest.raises(InputError, match=re.escape(message)):
        parse_request(body, length)


def tensor(datatype: str, shape: tuple[int, ...], data: Any = None, binary: bytes | None = None) -> RequestInput:
    return RequestInput("x", datatype, shape, data, None if binary is None else memoryview(binary))


ARRAY_ERRORS = {
    "too few numbers": (tensor("FP32", (2, 2), [[1, 2], [3]]), "ragged"),
    "count differs from shape": (tensor("FP32", (2, 2), [1, 2, 3]), "FP32 [2, 2] has 4 elements, `data` has 3"),
    "data not a list": (tensor("FP32", (1,), 1.5), "`data` must be a list"),
    "text for numbers": (tensor("FP32", (1,), ["1.5"]), "must hold numbers for FP32"),
    "fractions for integers": (tensor("INT32", (1,), [1.5]), "must hold integers for INT32"),
    "numbers for booleans": (tensor("BOOL", (1,), [1]), "must hold true/false for BOOL"),
    "beyond the integer type": (tensor("UINT8", (2,), [1, 256]), "values must lie in [0, 255] for UINT8"),
    "binary of the wrong size": (tensor("FP32", (2,), binary=b"\x00" * 4), "FP32 [2] takes 8 bytes, binary_data_size is 4"),
    "BYTES in JSON not text": (tensor("BYTES", (2,), ["a", 1]), "x[1]: BYTES elements in JSON are strings, got int"),
    "BYTES element cut short": (tensor("BYTES", (1,), binary=struct.pack("<I", 10) + b"abc"), "10 bytes announced, 3 left"),
    "BYTES data ends early": (tensor("BYTES", (2,), binary=struct.pack("<I", 1) + b"a"), "ends before element 1 of 2"),
    "BYTES data left over": (tensor("BYTES", (1,), binary=struct.pack("<I", 1) + b"ab"), "1 bytes left after the 1 elements"),
}


@pytest.mark.parametrize("case", list(ARRAY_ERRORS))
def test_tensor_data_that_does_not_fit_its_declaration_is_refused(case: str) -> None:
    given, message = ARRAY_ERRORS[case]
    with pytest.raises(InputError, match=re.escape(message)):
        to_array(given)


def test_a_number_beyond_fp32_becomes_inf_for_the_task_to_refuse() -> None:
    assert np.isinf(to_array(tensor("FP32", (1,), [1e300]))[0])

"""The Open Inference Protocol's wire format: KServe v2 REST, with Triton's binary tensor data extension.

A request body is a JSON object, optionally followed by binary tensor data. Then the
header Inference-Header-Content-Length gives the JSON's length, and each input sent as
binary gives its byte count in `parameters.binary_data_size`, in the order of `inputs`.
Binary data is little-endian and row-major; a BYTES element is a 4-byte little-endian
length followed by its bytes. Outputs go back as JSON `data`, or as binary after the
JSON when the request asks (`binary_data_output` for all, `binary_data` per output).

Only the wire lives here: which tensors a model takes is its task's business
(service/core/tasks), and v2.py joins the two. Every malformed request is an
InputError (400) whose message names the input and what is wrong with it.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.core.errors import InputError
from service.core.tasks.tensors import V2_NUMPY_TYPES, Tensor

HEADER_LENGTH = "inference-header-content-length"
_END = object()  # the end of a list, for _flatten
BYTES_LENGTH = struct.Struct("<I")  # a BYTES element's length prefix


@dataclass(frozen=True)
class RequestInput:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any  # the JSON `data` (nested lists), or None when the tensor came as binary
    binary: memoryview | None

    def describe(self) -> str:
        return describe(self.datatype, self.shape)


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: list[RequestInput]
    outputs: dict[str, bool] | None  # requested output -> as binary; None: every output
    binary_output: bool  # the default for outputs not named (`binary_data_output`)


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    """A request body (and its Inference-Header-Content-Length) -> the request, its binary inputs sliced out, not decoded."""
    head, binary = _split(body, header_length)
    try:
        header = json.loads(head)
    except json.JSONDecodeError as exc:
        binary_after = exc.msg == "Extra data" and header_length is None
        hint = " (binary tensor data after the JSON needs an Inference-Header-Content-Length header)" if binary_after else ""
        raise InputError(f"invalid JSON: {exc}{hint}") from None
    except ValueError as exc:  # not UTF-8
        raise InputError(f"invalid JSON: {exc}") from None
    except RecursionError:  # about a thousand nested brackets (it answered 500)
        raise InputError("invalid JSON: nested too deeply") from None
    if not isinstance(header, dict):
        raise InputError("the request must be a JSON object with `inputs`")
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InputError(f"`id` must be a string, got {type(request_id).__name__}")
    binary_output = _flag(_parameters(header, "the request"), "binary_data_output", False)
    return InferRequest(request_id, _inputs(header, binary, header_length is not None), _outputs(header, binary_output), binary_output)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    if not is_byte_count(header_length):
        raise InputError(f"Inference-Header-Content-Length must be a byte count, got {header_length[:40]!r}")
    length = int(header_length)
    if length > len(body):
        raise InputError(f"Inference-Header-Content-Length is {length:,} but the body has only {len(body):,} bytes")
    return body[:length], memoryview(body)[length:]


def is_byte_count(text: str) -> bool:
    """ASCII digits only: '²' is a digit to str.isdigit(), not to int() (it answered 500)."""
    text = text.strip()
    return text.isascii() and text.isdigit()


def _parameters(obj: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    parameters = obj.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InputError(f"{where}: `parameters` must be an object")
    return parameters


def _flag(parameters: Mapping[str, Any], name: str, default: bool) -> bool:
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise InputError(f"parameter {name} must be true or false, got {value!r}")
    return value


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _inputs(header: Mapping[str, Any], binary: memoryview, framed: bool) -> list[RequestInput]:
    raw = header.get("inputs")
    if not isinstance(raw, list) or not raw:
        raise InputError("`inputs` must be a non-empty list of tensors")
    inputs, offset = [], 0
    for index, tensor in enumerate(raw):
        where = f"inputs[{index}]"
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise InputError(f"{where} must be an object with a `name`")
        where = f"input {tensor['name']}"
        datatype, shape = tensor.get("datatype"), tensor.get("shape")
        if datatype != "BYTES" and datatype not in V2_NUMPY_TYPES:
            raise InputError(f"{where}: unsupported datatype {datatype!r} (supported: BYTES, {', '.join(V2_NUMPY_TYPES)})")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise InputError(f"{where}: `shape` must be a list of non-negative integers, got {shape!r}")
        size = _parameters(tensor, where).get("binary_data_size")
        if size is None:
            if "data" not in tensor:
                raise InputError(f"{where}: no `data` and no binary_data_size parameter (shared memory is not supported)")
            inputs.append(RequestInput(tensor["name"], datatype, tuple(shape), tensor["data"], None))
            continue
        if not _is_count(size):
            raise InputError(f"{where}: binary_data_size must be a byte count, got {size!r}")
        if offset + size > len(binary):
            hint = "" if framed else " (no Inference-Header-Content-Length header, so the body has no binary section)"
            raise InputError(
                f"{where}: binary_data_size {size:,} runs past the end of the binary data, {len(binary) - offset:,} bytes left{hint}"
            )
        inputs.append(RequestInput(tensor["name"], datatype, tuple(shape), None, binary[offset : offset + size]))
        offset += size
    if offset != len(binary):
        raise InputError(f"the body has {len(binary) - offset:,} bytes of binary data beyond the inputs' binary_data_size in all")
    names = [i.name for i in inputs]
    if len(set(names)) != len(names):
        raise InputError(f"an input is given more than once: {names}")
    return inputs


def _outputs(header: Mapping[str, Any], binary_output: bool) -> dict[str, bool] | None:
    raw = header.get("outputs")
    if not raw:
        return None
    if not isinstance(raw, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw):
        raise InputError("`outputs` must be a list of objects with a `name`")
    return {o["name"]: _flag(_parameters(o, f"output {o['name']}"), "binary_data", binary_output) for o in raw}


# ---------------------------------------------------------------- tensor data -> arrays


def to_array(tensor: RequestInput) -> np.ndarray:
    """An input's data as an array of its shape: numbers in its datatype; BYTES as an object array of bytes (binary) or str (JSON)."""
    if tensor.binary is not None:
        return from_raw(tensor.name, tensor.datatype, tensor.shape, tensor.binary, "binary_data_size")
    count = math.prod(tensor.shape)
    if tensor.datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = _json_elements(tensor, count)
        return array.reshape(tensor.shape)
    return _json_numbers(tensor, np.dtype(V2_NUMPY_TYPES[tensor.datatype]).newbyteorder("<"), count)


def describe(datatype: str, shape: Sequence[int]) -> str:
    return f"{datatype} {list(shape)}"


def from_raw(name: str, datatype: str, shape: tuple[int, ...], raw: memoryview | bytes, size_name: str) -> np.ndarray:
    """Raw tensor bytes (binary tensor data here, gRPC's raw_input_contents) -> an array of `shape`; `size_name` names their length in messages."""
    count = math.prod(shape)
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = _raw_elements(name, datatype, shape, memoryview(raw), count)
        return array.reshape(shape)
    dtype = np.dtype(V2_NUMPY_TYPES[datatype]).newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise InputError(f"input {name}: {describe(datatype, shape)} takes {count * dtype.itemsize:,} bytes, {size_name} is {len(raw):,}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _raw_elements(name: str, datatype: str, shape: tuple[int, ...], view: memoryview, count: int) -> list[bytes]:
    offset, elements = 0, []
    for index in range(count):
        if offset + BYTES_LENGTH.size > len(view):
            raise InputError(f"input {name}: the binary data ends before element {index} of {count} ({describe(datatype, shape)})")
        (length,) = BYTES_LENGTH.unpack_from(view, offset)
        offset += BYTES_LENGTH.size
        if offset + length > len(view):
            raise InputError(f"input {name}[{index}]: {length:,} bytes announced, {len(view) - offset:,} left in its binary data")
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    if offset != len(view):
        raise InputError(f"input {name}: {len(view) - offset:,} bytes left after the {count} elements of {describe(datatype, shape)}")
    return elements


def _flatten(data: Any) -> Iterator[Any]:
    """The leaves of nested lists in order, without recursion (JSON may nest about a thousand deep)."""
    stack = [iter([data])]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            yield item


def _json_elements(tensor: RequestInput, count: int) -> list[str]:
    if not isinstance(tensor.data, list):
        raise InputError(f"input {tensor.name}: `data` must be a list")
    elements = list(_flatten(tensor.data))
    if len(elements) != count:
        raise InputError(f"input {tensor.name}: {tensor.describe()} has {count:,} elements, `data` has {len(elements):,}")
    for index, element in enumerate(elements):
        if not isinstance(element, str):
            raise InputError(f"input {tensor.name}[{index}]: BYTES elements in JSON are strings, got {type(element).__name__}")
    return elements


def _json_numbers(tensor: RequestInput, dtype: np.dtype[Any], count: int) -> np.ndarray:
    if not isinstance(tensor.data, list):
        raise InputError(f"input {tensor.name}: `data` must be a list")
    try:
        array = np.asarray(tensor.data)
    except (ValueError, RecursionError):
        raise InputError(f"input {tensor.name}: `data` is a ragged or too deeply nested list") from None
    if array.size != count:
        raise InputError(f"input {tensor.name}: {tensor.describe()} has {count:,} elements, `data` has {array.size:,}")
    kinds, what = ("b", "true/false") if dtype.kind == "b" else ("iu", "integers") if dtype.kind in "iu" else ("iuf", "numbers")
    if count and array.dtype.kind not in kinds:
        raise InputError(f"input {tensor.name}: `data` must hold {what} for {tensor.datatype}")
    if count and dtype.kind in "iu":
        limits = np.iinfo(dtype)
        if array.min() < limits.min or array.max() > limits.max:
            raise InputError(f"input {tensor.name}: values must lie in [{limits.min}, {limits.max}] for {tensor.datatype}")
    with np.errstate(over="ignore"):  # a number beyond FP32 becomes inf, which the task refuses by name
        return array.astype(dtype).reshape(tensor.shape)


# ---------------------------------------------------------------- outputs -> response


def encode_response(
    model_name: str, version: int, request: InferRequest, tensors: Sequence[Tensor], arrays: Mapping[str, np.ndarray]
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: the outputs asked for (all by default), each as JSON data or binary."""
    wanted = request.outputs if request.outputs is not None else {t.name: request.binary_output for t in tensors}
    by_name = {t.name: t for t in tensors}
    outputs, chunks = [], []
    for name, binary in wanted.items():
        tensor, array = by_name[name], arrays[name]
        entry: dict[str, Any] = {"name": name, "datatype": tensor.datatype, "shape": list(array.shape)}
        if binary:
            raw = to_raw(array, tensor.datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif tensor.datatype == "BYTES":
            entry["data"] = [element.decode() for element in array.reshape(-1)]
        else:
            entry["data"] = array.reshape(-1).tolist()
        outputs.append(entry)
    header: dict[str, Any] = {"model_name": model_name, "model_version": str(version)}
    if request.id is not None:
        header["id"] = request.id
    header["outputs"] = outputs
    head = json.dumps(header).encode()
    if not chunks:
        return head, {"content-type": "application/json"}
    return head + b"".join(chunks), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(head))}


def to_raw(array: np.ndarray, datatype: str) -> bytes:
    """An array as raw tensor bytes: little-endian and row-major; a BYTES element as its 4-byte length and its bytes."""
    if datatype == "BYTES":
        return b"".join(BYTES_LENGTH.pack(len(element)) + element for element in array.reshape(-1))
    return np.ascontiguousarray(array, dtype=np.dtype(V2_NUMPY_TYPES[datatype]).newbyteorder("<")).tobytes()

"""The Open Inference Protocol's gRPC messages <-> the tensors of the shared request path (service/http/v2_infer.py).

An input's elements come either typed, in the `contents` field of its datatype
(`fp32_contents` for FP32, `uint_contents` for UINT8/16/32, `bytes_contents` for BYTES,
...), or raw: one `raw_input_contents` entry per input, little-endian and row-major, a
BYTES element as a 4-byte length and its bytes (the same framing as REST's binary tensor
data, so both use v2_codec's from_raw/to_raw). Outputs go back raw when the request came
raw (what Triton's client reads) or asks with the parameter `binary_data_output`, typed
otherwise. Every malformed message is an InputError (INVALID_ARGUMENT) naming the input
and what is wrong with it; arrays are made only once v2_infer has accepted the name,
datatype and shape, so a huge declared shape costs nothing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import numpy as np

from service.core.errors import InputError
from service.core.tasks.tensors import V2_NUMPY_TYPES, Tensor
from service.grpc import inference_pb2 as pb
from service.http.v2_codec import describe, from_raw, to_raw
from service.http.v2_infer import InputTensor

# Which `contents` field holds the elements of each datatype (FP16 has none: raw only).
CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
BINARY_OUTPUT = "binary_data_output"  # request parameter: outputs as raw_output_contents (true) or typed (false)


def inputs(request: pb.ModelInferRequest) -> list[InputTensor]:
    """The request's inputs for v2_infer.check_inputs; InputError for a message that breaks the protocol's rules."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InputError(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; send one per input, in order")
    tensors, names = [], set()
    for index, tensor in enumerate(request.inputs):
        where = f"input {tensor.name}" if tensor.name else f"inputs[{index}]"
        if not tensor.name:
            raise InputError(f"{where} has no name")
        if tensor.name in names:
            raise InputError(f"input {tensor.name} is given more than once")
        names.add(tensor.name)
        if tensor.datatype != "BYTES" and tensor.datatype not in V2_NUMPY_TYPES:
            raise InputError(f"{where}: unsupported datatype {tensor.datatype!r} (supported: BYTES, {', '.join(V2_NUMPY_TYPES)})")
        if any(d < 0 for d in tensor.shape):
            raise InputError(f"{where}: shape must be non-negative sizes, got {list(tensor.shape)}")
        if raw and tensor.HasField("contents"):
            raise InputError(f"{where}: send contents or raw_input_contents, not both")
        shape = tuple(tensor.shape)
        if raw:
            array = functools.partial(from_raw, tensor.name, tensor.datatype, shape, raw[index], f"raw_input_contents[{index}]'s length")
        else:
            array = functools.partial(_typed, tensor, shape)
        tensors.append(InputTensor(tensor.name, tensor.datatype, shape, array))
    if not tensors:
        raise InputError("the request has no inputs")
    return tensors


def _typed(tensor: pb.ModelInferRequest.InferInputTensor, shape: tuple[int, ...]) -> np.ndarray:
    """The elements of `contents` as an array of `shape`, in the datatype; InputError when they do not fit."""
    name, datatype, count = tensor.name, tensor.datatype, math.prod(shape)
    field = CONTENTS_FIELDS.get(datatype)
    used = [f.name for f, _ in tensor.contents.ListFields()]
    if field is None:
        raise InputError(f"input {name}: {datatype} has no contents field; send it in raw_input_contents")
    if [u for u in used if u != field]:
        raise InputError(f"input {name}: {datatype} elements go in contents.{field}, got {', '.join(used)}")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InputError(f"input {name}: {describe(datatype, shape)} has {count:,} elements, contents.{field} has {len(values):,}")
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    dtype = np.dtype(V2_NUMPY_TYPES[datatype])
    wide = np.array(values, dtype=np.dtype(_wide_type(field)))
    if count and dtype.kind in "iu" and dtype.itemsize < wide.itemsize:
        limits = np.iinfo(dtype)
        if wide.min() < limits.min or wide.max() > limits.max:
            raise InputError(f"input {name}: values must lie in [{limits.min}, {limits.max}] for {datatype}")
    return wide.astype(dtype, copy=False).reshape(shape)


def _wide_type(field: str) -> type[np.generic]:
    """The NumPy type of a contents field's protobuf type (int32 holds INT8 and INT16 too, uint32 UINT8 and UINT16)."""
    return {
        "bool_contents": np.bool_,
        "int_contents": np.int32,
        "int64_contents": np.int64,
        "uint_contents": np.uint32,
        "uint64_contents": np.uint64,
        "fp32_contents": np.float32,
        "fp64_contents": np.float64,
    }[field]


def wants_raw_outputs(request: pb.ModelInferRequest) -> bool:
    """Outputs raw when the request says so in `binary_data_output`, else when its inputs came raw."""
    if BINARY_OUTPUT in request.parameters:
        parameter = request.parameters[BINARY_OUTPUT]
        if parameter.WhichOneof("parameter_choice") != "bool_param":
            raise InputError(f"parameter {BINARY_OUTPUT} must be a bool_param")
        return parameter.bool_param
    return bool(request.raw_input_contents)


def response(
    model_name: str, version: int, request: pb.ModelInferRequest, tensors: Sequence[Tensor], arrays: Mapping[str, np.ndarray]
) -> pb.ModelInferResponse:
    """The outputs asked for (all, in the model's order, when none is named), raw or typed as `wants_raw_outputs` says."""
    raw = wants_raw_outputs(request)
    by_name = {t.name: t for t in tensors}
    names = [o.name for o in request.outputs] or list(by_name)
    reply = pb.ModelInferResponse(model_name=model_name, model_version=str(version), id=request.id)
    for name in names:
        datatype, array = by_name[name].datatype, arrays[name]
        output = reply.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw:
            reply.raw_output_contents.append(to_raw(array, datatype))
        else:
            getattr(output.contents, CONTENTS_FIELDS[datatype]).extend(array.reshape(-1).tolist())
    return reply

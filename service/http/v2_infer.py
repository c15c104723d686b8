"""The Open Inference Protocol's request path once a transport has decoded its wire format: REST (v2.py) and gRPC (service/grpc/).

A transport turns its message into `InputTensor`s (name, datatype, shape, and the data,
made an array only once the tensor is accepted, so a huge declared shape costs nothing)
and encodes the arrays that come back. Everything between lives here, once: which served
version answers (a named one exactly, otherwise as the friendly endpoints route: a
canary's share, a shadow), the match against the tensors the task's adapter declares
(service/core/tasks/tensors.py), the item limits, the task's cheap per-item check on the
event loop, then `Executor.predict` (admission, worker threads, batching where it pays; a
bad item fails only its own request), and the adapter's output arrays.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException

from service.core.config import Settings
from service.core.errors import InputError, NotFoundError, NotReady
from service.core.runtime import LoadedModel, ModelRuntime
from service.core.tasks.tensors import Tensor, v2_tensors
from service.http.executor import Executor, ItemError, route

PLATFORM = "onnxruntime_onnx"  # Triton's platform name for ONNX models run by onnxruntime
SERVER_NAME = "modelserve"


@dataclass(frozen=True)
class InputTensor:
    """One input of a request, as the transport decoded it; `array()` gives its data as an array of `shape`.

    Numeric data in its datatype; BYTES as an object array of bytes (or str, from JSON).
    `array()` raises InputError when the data does not fit the datatype and shape.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: Callable[[], np.ndarray]


@dataclass(frozen=True)
class CheckedRequest:
    """A request's one input, matched with the model's declared tensor, and its items after the task's `check`."""

    tensor: Tensor
    items: list[Any]


def server_version() -> str:
    try:
        return importlib.metadata.version(SERVER_NAME)
    except importlib.metadata.PackageNotFoundError:  # a bento carries the code, not the installed package
        return "unknown"


def serving() -> tuple[ModelRuntime, Executor]:
    """This worker's runtime and executor; NotReady while the service instance is still loading its models."""
    try:
        service = bentoml.get_current_service()
    except BentoMLException:
        raise NotReady("models are still loading") from None
    return service.runtime, service.executor


def served_version(runtime: ModelRuntime, name: str, version: str | None) -> LoadedModel:
    """The version of `name` asked for (the served one when None); NotFoundError for one this worker does not serve."""
    if version is None and name in runtime:
        return runtime.get(name)
    return routed(runtime, name, version, None)[0]


def routed(runtime: ModelRuntime, name: str, version: str | None, routing_key: str | None) -> tuple[LoadedModel, LoadedModel | None]:
    """(the version that answers, a shadow or None): a named version exactly (CURRENT or a live candidate),
    otherwise as the friendly endpoints route (a canary's share, a shadow; service/http/executor.py)."""
    if name not in runtime:
        raise NotFoundError(f"model {name!r} is not served here (served: {list(runtime.served())})")
    if version is None:
        return route(runtime, name, routing_key)
    slot = runtime.candidate(name)
    for model in (runtime.get(name), slot.model if slot else None):
        if model is not None and version == str(model.version):
            return model, None
    raise NotFoundError(f"version {version!r} of {name} is not served; version {runtime.get(name).version} is")


def model_metadata(model: LoadedModel) -> dict[str, Any]:
    return {
        "name": model.name,
        "versions": [str(model.version)],
        "platform": PLATFORM,
        "inputs": [t.describe() for t in v2_tensors(model.task).inputs(model.assets)],
        "outputs": [t.describe() for t in output_tensors(model)],
    }


def output_tensors(model: LoadedModel) -> list[Tensor]:
    return v2_tensors(model.task).outputs(model.metadata)


def repository_index(runtime: ModelRuntime) -> list[dict[str, str]]:
    """Triton's repository index: every model served here, at its served version."""
    return [{"name": m.name, "version": str(m.version), "state": "READY"} for m in runtime.served().values()]


def _declared_input(model: LoadedModel, inputs: Sequence[InputTensor]) -> tuple[Tensor, InputTensor]:
    """The one input the request sends, matched against the task's declared tensors by name, datatype and shape."""
    declared = {t.name: t for t in v2_tensors(model.task).inputs(model.assets)}
    choices = " or ".join(f"{t.name} ({t.datatype} {list(t.shape)})" for t in declared.values())
    unknown = [i.name for i in inputs if i.name not in declared]
    if unknown:
        raise InputError(f"unknown input {unknown[0]!r}; {model.name} takes {choices}")
    if len(inputs) != 1:
        raise InputError(f"send one input, {choices}; got {[i.name for i in inputs]}")
    given = inputs[0]
    tensor = declared[given.name]
    if given.datatype != tensor.datatype:
        raise InputError(f"input {given.name} must be {tensor.datatype}, got {given.datatype}")
    if len(given.shape) != len(tensor.shape) or any(want not in (-1, got) for want, got in zip(tensor.shape, given.shape)):
        raise InputError(f"input {given.name} must have shape {list(tensor.shape)} (-1: any size), got {list(given.shape)}")
    return tensor, given


def check_inputs(model: LoadedModel, inputs: Sequence[InputTensor], outputs: Collection[str] | None, settings: Settings) -> CheckedRequest:
    """Match the inputs and outputs with the model's tensors, then check every item as the friendly endpoint does.

    InputError names the input, the item and the fault. Cheap per item (an image's header, not
    its pixels), but a transport runs it in a worker thread when the message is large.
    """
    tensor, given = _declared_input(model, inputs)
    task, tensors, count = model.task, v2_tensors(model.task), given.shape[0]
    if not 1 <= count <= settings.max_items:
        raise InputError(f"input {given.name} has {count} {task.item_noun}s; send 1 to {settings.max_items} (MODELSERVE_MAX_ITEMS)")
    names = {t.name for t in output_tensors(model)}
    unknown = sorted(set(outputs or ()) - names)
    if unknown:
        raise InputError(f"unknown output {unknown[0]!r}; {model.name} gives {sorted(names)}")
    array = given.array()
    items = []
    for index in range(count):
        try:
            items.append(task.check(tensors.value(tensor, array[index], settings), model.assets, settings))
        except InputError as exc:
            raise InputError(f"{given.name}[{index}]: {exc}") from None
    task.check_request(items, settings)
    return CheckedRequest(tensor, items)


async def infer(executor: Executor, model: LoadedModel, shadow: LoadedModel | None, request: CheckedRequest) -> dict[str, np.ndarray]:
    """Checked items -> one array per output tensor of `model` (output_tensors), by name."""
    try:
        answers = await executor.predict(model, request.items, shadow)
    except ItemError as exc:
        raise InputError(f"{request.tensor.name}[{exc.index}]: {exc}") from None
    return v2_tensors(model.task).arrays(answers, model.metadata)

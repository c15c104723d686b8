"""The Open Inference Protocol (KServe v2 REST) beside the friendly API, on the same models and request path.

    GET  /v2                                         server metadata (extensions: binary_tensor_data)
    GET  /v2/health/live, /v2/health/ready
    GET  /v2/models/{name}[/versions/{v}]            model metadata: input and output tensors, from the model's task
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer      JSON, or JSON + binary tensor data (Triton's extension)
    POST /v2/repository/index                        the served models (Triton's repository index)

A plain Starlette app mounted on the BentoML service, like admin.py: BentoML's typed APIs
cannot read the binary extension's framing (a JSON header, then raw tensor bytes). An
inference request takes the friendly endpoints' path: the task's cheap `check` per item
on the event loop (an image's header, not its pixels), the request's limits, then
`Executor.predict` (admission, worker threads, batching where it pays; a bad item
fails only its own request). The wire format is v2_codec.py; which tensors a model
takes and gives is declared by its task's tensor adapter (service/core/tasks/tensors.py),
never by its name here.

A model is served at its CURRENT version only: /v2/models/{name} follows a hot reload,
and a version that is not served is a 404 with the protocol's {"error": ...} body.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Awaitable, Callable
from typing import Any

import bentoml
from bentoml.exceptions import BentoMLException
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.core.config import Settings
from service.core.errors import InputError, ModelServeError, NotFoundError, Overloaded
from service.core.runtime import LoadedModel, ModelRuntime
from service.core.tasks.tensors import Tensor, v2_tensors
from service.http.executor import ROUTING_HEADER, Executor, ItemError, route
from service.http.v2_codec import HEADER_LENGTH, InferRequest, RequestInput, encode_response, parse_request, to_array

PLATFORM = "onnxruntime_onnx"  # Triton's platform name for ONNX models run by onnxruntime
EXTENSIONS = ["binary_tensor_data"]
# A JSON header larger than this (pixels as JSON numbers: ~600 KB per image) is parsed in a worker
# thread: json.loads of a few MB takes tens of milliseconds that other requests would wait on.
LARGE_JSON_BYTES = 256 * 1024
CONTENT_TYPES = ("application/json", "application/octet-stream", "")  # tritonclient sends no Content-Type
Handler = Callable[[Request], Awaitable[Response]]


def _server_version() -> str:
    try:
        return importlib.metadata.version("modelserve")
    except importlib.metadata.PackageNotFoundError:  # a bento carries the code, not the installed package
        return "unknown"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def protocol_errors(handler: Handler) -> Handler:
    """Expected failures as the protocol's {"error": ...} with their status; 503s with Retry-After."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except Overloaded as exc:
            return _error(exc.http_status, str(exc), {"Retry-After": str(exc.retry_after_s)})
        except ModelServeError as exc:
            return _error(exc.http_status, str(exc))

    return wrapped


def serving() -> tuple[ModelRuntime, Executor]:
    try:
        service = bentoml.get_current_service()
    except BentoMLException:  # the service instance is still loading its models
        raise Overloaded("models are still loading") from None
    return service.runtime, service.executor


def _model(runtime: ModelRuntime, request: Request) -> LoadedModel:
    """The version of the model in the path (CURRENT when none is named); 404 for one this worker does not serve."""
    if "version" not in request.path_params and request.path_params["name"] in runtime:
        return runtime.get(request.path_params["name"])
    return _routed(runtime, request)[0]


def _routed(runtime: ModelRuntime, request: Request) -> tuple[LoadedModel, LoadedModel | None]:
    """(the version that answers, a shadow or None): a named version exactly (CURRENT or a live candidate),
    otherwise as the friendly endpoints route (a canary's share, a shadow; service/http/executor.py)."""
    name, version = request.path_params["name"], request.path_params.get("version")
    if name not in runtime:
        raise NotFoundError(f"model {name!r} is not served here (served: {list(runtime.served())})")
    if version is None:
        return route(runtime, name, request.headers.get(ROUTING_HEADER))
    slot = runtime.candidate(name)
    for model in (runtime.get(name), slot.model if slot else None):
        if model is not None and version == str(model.version):
            return model, None
    raise NotFoundError(f"version {version!r} of {name} is not served; version {runtime.get(name).version} is")


async def server_metadata(request: Request) -> Response:
    return JSONResponse({"name": "modelserve", "version": _server_version(), "extensions": EXTENSIONS})


async def live(request: Request) -> Response:
    return JSONResponse({"live": True})


async def ready(request: Request) -> Response:
    """Ready once this worker serves its models (the instance exists only after every one is loaded and warm)."""
    runtime, _ = serving()
    return JSONResponse({"ready": bool(runtime.served())})


async def model_metadata(request: Request) -> Response:
    model = _model(serving()[0], request)
    return JSONResponse(
        {
            "name": model.name,
            "versions": [str(model.version)],
            "platform": PLATFORM,
            "inputs": [t.describe() for t in v2_tensors(model.task).inputs(model.assets)],
            "outputs": [t.describe() for t in v2_tensors(model.task).outputs(model.metadata)],
        }
    )


async def model_ready(request: Request) -> Response:
    model = _model(serving()[0], request)
    return JSONResponse({"name": model.name, "ready": True})


async def repository_index(request: Request) -> Response:
    """Triton's repository index: every model served here, at its served version."""
    runtime, _ = serving()
    return JSONResponse([{"name": m.name, "version": str(m.version), "state": "READY"} for m in runtime.served().values()])


def _declared_input(model: LoadedModel, request: InferRequest) -> tuple[Tensor, RequestInput]:
    """The one input the request sends, matched against the task's declared tensors by name, datatype and shape."""
    declared = {t.name: t for t in v2_tensors(model.task).inputs(model.assets)}
    choices = " or ".join(f"{t.name} ({t.datatype} {list(t.shape)})" for t in declared.values())
    unknown = [i.name for i in request.inputs if i.name not in declared]
    if unknown:
        raise InputError(f"unknown input {unknown[0]!r}; {model.name} takes {choices}")
    if len(request.inputs) != 1:
        raise InputError(f"send one input, {choices}; got {[i.name for i in request.inputs]}")
    given = request.inputs[0]
    tensor = declared[given.name]
    if given.datatype != tensor.datatype:
        raise InputError(f"input {given.name} must be {tensor.datatype}, got {given.datatype}")
    if len(given.shape) != len(tensor.shape) or any(want not in (-1, got) for want, got in zip(tensor.shape, given.shape)):
        raise InputError(f"input {given.name} must have shape {list(tensor.shape)} (-1: any size), got {list(given.shape)}")
    return tensor, given


def checked_request(
    model: LoadedModel, body: bytes, header_length: str | None, settings: Settings
) -> tuple[InferRequest, Tensor, list[Any]]:
    """Parse the body and check every item as the friendly endpoint does; InputError names the input, the item and the fault."""
    request = parse_request(body, header_length)
    tensor, given = _declared_input(model, request)
    task, tensors, count = model.task, v2_tensors(model.task), given.shape[0]
    if not 1 <= count <= settings.max_items:
        raise InputError(f"input {given.name} has {count} {task.item_noun}s; send 1 to {settings.max_items} (MODELSERVE_MAX_ITEMS)")
    outputs = {t.name for t in tensors.outputs(model.metadata)}
    unknown = sorted(set(request.outputs or ()) - outputs)
    if unknown:
        raise InputError(f"unknown output {unknown[0]!r}; {model.name} gives {sorted(outputs)}")
    array = to_array(given)
    items = []
    for index in range(count):
        try:
            items.append(task.check(tensors.value(tensor, array[index], settings), model.assets, settings))
        except InputError as exc:
            raise InputError(f"{given.name}[{index}]: {exc}") from None
    task.check_request(items, settings)
    return request, tensor, items


def _json_bytes(body: bytes, header_length: str | None) -> int:
    return min(len(body), int(header_length)) if header_length and header_length.isdigit() else len(body)


def v2_app(settings: Settings) -> Starlette:
    @protocol_errors
    async def infer(request: Request) -> Response:
        runtime, executor = serving()
        model, shadow = _routed(runtime, request)
        if request.headers.get("content-encoding", "identity").lower() != "identity":
            return _error(415, f"Content-Encoding {request.headers['content-encoding']!r} is not supported; send the body uncompressed")
        body, header_length = await request.body(), request.headers.get(HEADER_LENGTH)
        if _json_bytes(body, header_length) > LARGE_JSON_BYTES:
            infer_request, tensor, items = await executor.run(model.name, checked_request, model, body, header_length, settings)
        else:
            infer_request, tensor, items = checked_request(model, body, header_length, settings)
        try:
            answers = await executor.predict(model, items, shadow)
        except ItemError as exc:
            raise InputError(f"{tensor.name}[{exc.index}]: {exc}") from None
        tensors = v2_tensors(model.task)
        arrays = tensors.arrays(answers, model.metadata)
        content, headers = encode_response(model.name, model.version, infer_request, tensors.outputs(model.metadata), arrays)
        return Response(content, headers=headers)

    get = ["GET"]
    routes = [
        Route("/v2", server_metadata, methods=get),
        Route("/v2/health/live", live, methods=get),
        Route("/v2/health/ready", protocol_errors(ready), methods=get),
        Route("/v2/repository/index", protocol_errors(repository_index), methods=["POST"]),
    ]
    for path in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        routes += [
            Route(path, protocol_errors(model_metadata), methods=get),
            Route(f"{path}/ready", protocol_errors(model_ready), methods=get),
            Route(f"{path}/infer", infer, methods=["POST"]),
        ]
    return Starlette(routes=routes)

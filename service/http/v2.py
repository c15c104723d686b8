"""The Open Inference Protocol (KServe v2 REST) beside the friendly API, on the same models and request path.

    GET  /v2                                         server metadata (extensions: binary_tensor_data)
    GET  /v2/health/live, /v2/health/ready
    GET  /v2/models/{name}[/versions/{v}]            model metadata: input and output tensors, from the model's task
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer      JSON, or JSON + binary tensor data (Triton's extension)
    POST /v2/repository/index                        the served models (Triton's repository index)

A plain Starlette app mounted on the BentoML service, like admin.py: BentoML's typed APIs
cannot read the binary extension's framing (a JSON header, then raw tensor bytes). The wire
format is v2_codec.py; from decoded tensors to answers an inference request takes the path
that gRPC's takes too (v2_infer.py): the task's cheap `check` per item on the event loop
(an image's header, not its pixels), the request's limits, then `Executor.predict`
(admission, worker threads, batching where it pays; a bad item fails only its own request).
Which tensors a model takes and gives is declared by its task's tensor adapter
(service/core/tasks/tensors.py), never by its name here.

A model is served at its CURRENT version only: /v2/models/{name} follows a hot reload,
and a version that is not served is a 404 with the protocol's {"error": ...} body.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.core.config import Settings
from service.core.errors import ModelServeError, Overloaded
from service.core.runtime import LoadedModel
from service.http.executor import ROUTING_HEADER
from service.http.v2_codec import HEADER_LENGTH, InferRequest, RequestInput, encode_response, is_byte_count, parse_request, to_array
from service.http.v2_infer import (
    SERVER_NAME,
    CheckedRequest,
    InputTensor,
    check_inputs,
    infer,
    model_metadata,
    output_tensors,
    repository_index,
    routed,
    served_version,
    server_version,
    serving,
)

EXTENSIONS = ["binary_tensor_data"]
# A JSON header larger than this (pixels as JSON numbers: ~600 KB per image) is parsed in a worker
# thread: json.loads of a few MB takes tens of milliseconds that other requests would wait on.
LARGE_JSON_BYTES = 256 * 1024
CONTENT_TYPES = ("application/json", "application/octet-stream", "")  # tritonclient sends no Content-Type
Handler = Callable[[Request], Awaitable[Response]]


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


def _model(request: Request) -> LoadedModel:
    """The version of the model in the path (CURRENT when none is named); 404 for one this worker does not serve."""
    return served_version(serving()[0], request.path_params["name"], request.path_params.get("version"))


async def server_metadata(request: Request) -> Response:
    return JSONResponse({"name": SERVER_NAME, "version": server_version(), "extensions": EXTENSIONS})


async def live(request: Request) -> Response:
    return JSONResponse({"live": True})


async def ready(request: Request) -> Response:
    """Ready once this worker serves its models (the instance exists only after every one is loaded and warm)."""
    runtime, _ = serving()
    return JSONResponse({"ready": bool(runtime.served())})


async def metadata(request: Request) -> Response:
    return JSONResponse(model_metadata(_model(request)))


async def model_ready(request: Request) -> Response:
    model = _model(request)
    return JSONResponse({"name": model.name, "ready": True})


async def index(request: Request) -> Response:
    """Triton's repository index: every model served here, at its served version."""
    return JSONResponse(repository_index(serving()[0]))


def _input(given: RequestInput) -> InputTensor:
    return InputTensor(given.name, given.datatype, given.shape, functools.partial(to_array, given))


def checked_request(model: LoadedModel, body: bytes, header_length: str | None, settings: Settings) -> tuple[InferRequest, CheckedRequest]:
    """Parse the body, then check it as every transport does (v2_infer.check_inputs); InputError names the input, item and fault."""
    request = parse_request(body, header_length)
    return request, check_inputs(model, [_input(i) for i in request.inputs], request.outputs, settings)


def _json_bytes(body: bytes, header_length: str | None) -> int:
    return min(len(body), int(header_length)) if header_length and is_byte_count(header_length) else len(body)


def v2_app(settings: Settings) -> Starlette:
    @protocol_errors
    async def infer_route(request: Request) -> Response:
        runtime, executor = serving()
        path = request.path_params
        model, shadow = routed(runtime, path["name"], path.get("version"), request.headers.get(ROUTING_HEADER))
        if request.headers.get("content-encoding", "identity").lower() != "identity":
            return _error(415, f"Content-Encoding {request.headers['content-encoding']!r} is not supported; send the body uncompressed")
        body, header_length = await request.body(), request.headers.get(HEADER_LENGTH)
        if _json_bytes(body, header_length) > LARGE_JSON_BYTES:
            infer_request, checked = await executor.run(model.name, checked_request, model, body, header_length, settings)
        else:
            infer_request, checked = checked_request(model, body, header_length, settings)
        arrays = await infer(executor, model, shadow, checked)
        content, headers = encode_response(model.name, model.version, infer_request, output_tensors(model), arrays)
        return Response(content, headers=headers)

    get = ["GET"]
    routes = [
        Route("/v2", server_metadata, methods=get),
        Route("/v2/health/live", live, methods=get),
        Route("/v2/health/ready", protocol_errors(ready), methods=get),
        Route("/v2/repository/index", protocol_errors(index), methods=["POST"]),
    ]
    for path in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        routes += [
            Route(path, protocol_errors(metadata), methods=get),
            Route(f"{path}/ready", protocol_errors(model_ready), methods=get),
            Route(f"{path}/infer", infer_route, methods=["POST"]),
        ]
    return Starlette(routes=routes)

"""The Open Inference Protocol over gRPC (KServe's GRPCInferenceService), in every BentoML worker beside HTTP.

BentoML 1.4's new SDK has no gRPC server, so each worker starts a `grpc.aio` server of
its own on its event loop, once its models are loaded (the service's startup hook), on
MODELSERVE_GRPC_PORT. Every worker binds the same port with SO_REUSEPORT and the kernel
spreads connections over them, as it spreads the HTTP port's. Until a worker is up its
port is closed (clients see UNAVAILABLE); it answers on the same models, executor,
admission, validation and per-version routing as the REST routes, through the same
code from decoded tensors to answers (service/http/v2_infer.py); only the wire format
differs (codec.py). The standard grpc.health.v1 service answers SERVING while the
worker serves, for Kubernetes' gRPC probes.

Errors carry gRPC's status codes for what REST's statuses say: INVALID_ARGUMENT (400,
naming the input and item), NOT_FOUND (404), RESOURCE_EXHAUSTED (overloaded, 503 with
Retry-After; also a message over MODELSERVE_MAX_REQUEST_BYTES, as 413), UNAVAILABLE
(not ready), DEADLINE_EXCEEDED (over MODELSERVE_REQUEST_TIMEOUT_S, or the client's
deadline), INTERNAL for a bug (logged). A bad message fails its own call only.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service.core.config import Settings
from service.core.errors import ModelServeError, NotReady, Overloaded
from service.grpc import codec
from service.grpc import inference_pb2 as pb
from service.grpc import inference_pb2_grpc as pb_grpc
from service.http.executor import ROUTING_HEADER
from service.http.v2_infer import (
    SERVER_NAME,
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

log = logging.getLogger("modelserve.grpc")
SERVICE_NAME = "inference.GRPCInferenceService"
# Typed contents of more elements than this (pixels as uint_contents: 150,528 per image) are turned
# into arrays in a worker thread: a few milliseconds per image that other requests would wait on.
LARGE_ELEMENTS = 256 * 1024
# A connection is asked to reconnect (GOAWAY, calls in flight finish) after this long, so that
# long-lived clients spread again over the workers sharing the port and over replicas behind an L4 balancer.
MAX_CONNECTION_AGE_MS = 60_000
STATUS_BY_HTTP = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
Request = TypeVar("Request")
Reply = TypeVar("Reply")
Method = Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Reply]]


def status_code(exc: ModelServeError) -> grpc.StatusCode:
    if isinstance(exc, NotReady):
        return grpc.StatusCode.UNAVAILABLE
    return STATUS_BY_HTTP.get(exc.http_status, grpc.StatusCode.INTERNAL)


def rpc(method: Method[Request, Reply]) -> Method[Request, Reply]:
    """Expected failures as their status and message, the request timeout as DEADLINE_EXCEEDED, a bug as INTERNAL (logged)."""

    @functools.wraps(method)
    async def wrapped(self: InferenceServicer, request: Request, context: grpc.aio.ServicerContext) -> Reply:
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                return await method(self, request, context)
        except ModelServeError as exc:
            if isinstance(exc, Overloaded):  # gRPC's retry pushback, and REST's Retry-After for clients that read it
                retry_ms = str(exc.retry_after_s * 1000)
                context.set_trailing_metadata((("grpc-retry-pushback-ms", retry_ms), ("retry-after", str(exc.retry_after_s))))
            await context.abort(status_code(exc), str(exc))
        except TimeoutError:
            timeout = self.settings.request_timeout_s
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {timeout} s (MODELSERVE_REQUEST_TIMEOUT_S)")
        except Exception:
            log.exception("%s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"{method.__name__} failed on the server (logged there)")
        raise AssertionError("context.abort returns only by raising")

    return wrapped


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str | None:
    return next((value for name, value in context.invocation_metadata() or () if name == key), None)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """GRPCInferenceService on this worker's models; the REST routes' answers, in the protocol's messages."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @rpc
    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @rpc
    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=bool(serving()[0].served()))

    @rpc
    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        """Ready when this worker serves that model (at that version, if one is named); false otherwise, as Triton answers."""
        runtime = serving()[0]
        try:
            served_version(runtime, request.name, request.version or None)
        except ModelServeError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @rpc
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=server_version(), extensions=[])

    @rpc
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        model = served_version(serving()[0], request.name, request.version or None)
        return pb.ModelMetadataResponse(**model_metadata(model))

    @rpc
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext) -> pb.RepositoryIndexResponse:
        return pb.RepositoryIndexResponse(models=repository_index(serving()[0]))

    @rpc
    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        runtime, executor = serving()
        model, shadow = routed(runtime, request.model_name, request.model_version or None, _metadata(context, ROUTING_HEADER))
        inputs, outputs = codec.inputs(request), [o.name for o in request.outputs] or None
        if sum(math.prod(i.shape) for i in inputs) > LARGE_ELEMENTS and not request.raw_input_contents:
            checked = await executor.run(model.name, check_inputs, model, inputs, outputs, self.settings)
        else:
            checked = check_inputs(model, inputs, outputs, self.settings)
        arrays = await infer(executor, model, shadow, checked)
        return codec.response(model.name, model.version, request, output_tensors(model), arrays)


class GrpcServer:
    """One worker's gRPC server: GRPCInferenceService and grpc.health.v1 on the shared port."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        limit = settings.max_request_bytes
        self.server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1),
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
                ("grpc.max_connection_age_grace_ms", settings.request_timeout_s * 1000),
            ]
        )
        self.health = health.aio.HealthServicer()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(settings), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)

    async def start(self) -> None:
        address = f"{self.settings.grpc_host}:{self.settings.grpc_port}"
        self.server.add_insecure_port(address)  # raises when the port is taken by a socket without SO_REUSEPORT
        await self.server.start()
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("Open Inference Protocol over gRPC on %s", address)

    async def stop(self) -> None:
        """Health says NOT_SERVING, new calls are refused, calls in flight get the request timeout to finish."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.request_timeout_s)

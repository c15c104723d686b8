"""The BentoML service over the registry's models: every one with a CURRENT version is served, found by polling.

    bentoml serve                      # from the project root (bentofile.yaml names this file)

One class, thin. Every served model answers at POST /models/{name}/predict (predict.py)
and on the Open Inference Protocol (/v2/..., v2.py; over gRPC on MODELSERVE_GRPC_PORT in
service/grpc/server.py, started in each worker once its models are loaded), whatever its
name: the registry is the catalog. The three shipped models also keep the endpoints they
had first: BentoML APIs made from their recipes (catalog.py), whose request item type
comes from the task's friendly-API adapter. Checks run per request on the event loop and
are cheap by contract (an image's header, not its pixels); the work (decoding,
preprocessing, inference, batching where it pays) runs in executor.py's worker threads.
GET /models[/{name}] and POST /admin/reload live in admin.py.
"""

from __future__ import annotations

import gc
import inspect
import json
import logging
from collections.abc import Callable
from typing import Annotated, Any

import bentoml
from bentoml.exceptions import InvalidArgument
from pydantic import AfterValidator, Field
from starlette.responses import JSONResponse, Response

from service.core.catalog import RECIPES, Recipe
from service.core.config import Settings
from service.core.errors import NotFoundError, Overloaded
from service.core.runtime import CurrentWatcher, LoadedModel, ModelRuntime
from service.core.tasks.friendly import friendly_api
from service.core.workers import WorkerGroup
from service.grpc.server import GrpcServer
from service.http.admin import admin_app
from service.http.drift import DriftMonitor, drift_routes
from service.http.executor import ROUTING_HEADER, Executor, ItemError, route
from service.http.guard import ClientErrorLogFilter, RequestGuard, requests_in_flight
from service.http.headers import SecurityHeaders
from service.http.metrics import own_metrics_directory
from service.http.playground import playground_routes
from service.http.predict import CONTENT_TYPES as PREDICT_CONTENT_TYPES
from service.http.predict import FILE_FIELDS as PREDICT_FILE_FIELDS
from service.http.predict import PREFIX as PREDICT_PREFIX
from service.http.predict import predict_routes
from service.http.v2 import CONTENT_TYPES as V2_CONTENT_TYPES
from service.http.v2 import v2_app
from service.patches import active as active_patches
from service.patches.bentoml_error_log import filter_request_errors
from service.patches.bentoml_request_timer import cancel_finished_request_timers
from service.patches.circus_drain import close_listeners_first
from service.patches.uvicorn_drain import drain_on_sigterm
from service.patches.uvicorn_header_timeout import limit_header_time
from service.patches.uvicorn_keep_alive import keep_alive_while_a_request_waits

SETTINGS = Settings.from_env()
# Patches of uvicorn and BentoML internals (service/patches, docs/patches.md): each checks the installed
# version and the shape of what it patches first, and stops the service with what to do when they differ.
own_metrics_directory()
cancel_finished_request_timers()
limit_header_time(SETTINGS.header_timeout_s, SETTINGS.max_header_bytes)
close_listeners_first()
drain_on_sigterm()
keep_alive_while_a_request_waits()
log = logging.getLogger("modelserve.service")


class ModelServe:
    """Keras models exported to ONNX, served on onnxruntime: images, texts and table rows in, predictions out."""

    def __init__(self) -> None:
        _configure_logging()
        log.info("patches of third-party internals in effect: %s", "; ".join(active_patches()) or "none")
        self.runtime = ModelRuntime(SETTINGS)
        self.workers = WorkerGroup(SETTINGS.worker_count())  # before loading: a request made before this load counts as carried out
        self.runtime.load_all(self.workers.last_served())  # verified, session opened, smoke-tested and warm before /readyz says ready
        self.monitor = DriftMonitor.from_settings(SETTINGS, self.runtime, self.workers)  # live drift, prediction log (drift.py)
        self.executor = Executor(SETTINGS, self.runtime, requests_in_flight, self.monitor)
        # Start-up leaves ~130,000 long-lived objects (BentoML, pydantic, onnxruntime) that every
        # full collection would walk again: 66-75 ms pauses under load, measured. Frozen, a full
        # collection walks only what requests allocate (about 2 ms).
        gc.collect()
        gc.freeze()
        self.watcher = CurrentWatcher(self.runtime, SETTINGS.reload_poll_s, self.workers).start()
        self.grpc: GrpcServer | None = None

    def __is_ready__(self) -> bool:
        return bool(self.runtime.served())

    @bentoml.on_shutdown
    def stop_monitor(self) -> None:
        """On a graceful stop, summarize what is queued and write the prediction log's buffered rows."""
        if self.monitor is not None:
            self.monitor.close()

    @bentoml.on_startup
    async def start_grpc(self) -> None:
        """The Open Inference Protocol over gRPC on this worker's event loop, now that its models are loaded."""
        if SETTINGS.grpc_port:
            self.grpc = GrpcServer(SETTINGS)
            await self.grpc.start()

    @bentoml.on_shutdown
    async def stop_grpc(self) -> None:
        if self.grpc is not None:
            await self.grpc.stop()


def served_model(name: str) -> LoadedModel:
    """The version of `name` this worker serves now (404 when it serves none)."""
    runtime: ModelRuntime = bentoml.get_current_service().runtime
    try:
        return runtime.get(name)
    except NotFoundError as exc:  # BentoML answers its own exception types with their status, anything else with 500
        raise bentoml.exceptions.NotFound(str(exc)) from None


def predict_api(recipe: Recipe) -> Any:
    """POST /<endpoint>: a BentoML API whose request field and item type come from the recipe's task's friendly API."""
    task, api = recipe.task, friendly_api(recipe.task)
    field = api.field
    assets: Callable[[], Any] = lambda: served_model(recipe.name).assets  # noqa: E731

    def check_request(items: list[Any]) -> list[Any]:
        task.check_request(items, SETTINGS)
        return items

    item = api.request_item(SETTINGS, assets)
    items = Annotated[list[item], Field(min_length=1, max_length=SETTINGS.max_items), AfterValidator(check_request)]  # type: ignore[valid-type]

    async def predict(self: ModelServe, ctx: bentoml.Context, **request: Any) -> Response:
        try:
            model, shadow = route(self.runtime, recipe.name, ctx.request.headers.get(ROUTING_HEADER))
        except NotFoundError as exc:  # not served (MODELSERVE_MODELS), or its directory was removed from the registry
            raise bentoml.exceptions.NotFound(str(exc)) from None
        try:
            answers = await self.executor.predict(model, request[field], shadow)
        except ItemError as exc:
            raise InvalidArgument(f"{field}[{exc.index}]: {exc}") from None
        except Overloaded as exc:  # BentoML would replace a 5xx's message with a generic one: answer it here
            # With a ctx parameter BentoML gives the response ctx's status and headers: set them there.
            ctx.response.status_code = exc.http_status
            ctx.response.metadata["Retry-After"] = str(exc.retry_after_s)
            return JSONResponse({"error": str(exc)}, status_code=exc.http_status)
        # Serialized here: BentoML would validate every answer into the response model again and
        # dump it through its IO machinery (about a tenth of the event loop's time per request).
        return Response(json.dumps(answers).encode(), media_type="application/json")

    predict.__name__ = predict.__qualname__ = recipe.endpoint
    predict.__doc__ = inspect.cleandoc(recipe.doc)
    predict.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=bentoml.Context),  # for the routing-key header
            inspect.Parameter(field, inspect.Parameter.KEYWORD_ONLY, annotation=items),
        ],
        return_annotation=list[api.answer_model],  # type: ignore[name-defined]
    )
    return bentoml.api(predict)


for _recipe in RECIPES.values():
    setattr(ModelServe, _recipe.endpoint, predict_api(_recipe))

ModelServe = bentoml.asgi_app(admin_app(SETTINGS, [*predict_routes(SETTINGS), *playground_routes(), *drift_routes()]), path="/")(  # type: ignore[misc]
    bentoml.service(
        name="modelserve",
        workers=SETTINGS.worker_count(),
        traffic={"timeout": SETTINGS.request_timeout_s},
        resources={"cpu": "1"},
        logging={"access": {"enabled": SETTINGS.access_log}},
        # BentoML's OpenTelemetry middleware makes a span per request even with no exporter set up.
        tracing={} if SETTINGS.tracing else {"excluded_urls": [".*"]},
    )(ModelServe)
)
ModelServe.mount_asgi_app(v2_app(SETTINGS), path="/")  # the Open Inference Protocol (KServe v2): service/http/v2.py
ModelServe.add_asgi_middleware(SecurityHeaders)  # added first: outside the guard, so its refusals carry them too
_friendly = {f"/{e.endpoint}": friendly_api(e.task) for e in RECIPES.values()}
ModelServe.add_asgi_middleware(
    RequestGuard,
    max_request_bytes=SETTINGS.max_request_bytes,
    content_types={path: api.content_types for path, api in _friendly.items()}
    | {"/admin/reload": ("application/json",), "/admin/candidate": ("application/json",), "/v2/": V2_CONTENT_TYPES}
    | {PREDICT_PREFIX: PREDICT_CONTENT_TYPES},
    file_fields={path: (api.field,) for path, api in _friendly.items() if "multipart/form-data" in api.content_types}
    | {PREDICT_PREFIX: PREDICT_FILE_FIELDS},
    max_files=SETTINGS.max_items,
    body_timeout_s=SETTINGS.body_timeout_s,
    json_bytes={f"/{e.endpoint}": SETTINGS.max_items * e.task.max_json_item_bytes(SETTINGS) + 1024 for e in RECIPES.values()},
    max_json_values=SETTINGS.max_json_values,
)


def _configure_logging() -> None:
    filter_request_errors(ClientErrorLogFilter())
    ours = logging.getLogger("modelserve")
    if not ours.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        ours.propagate = False

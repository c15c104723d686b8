"""The BentoML service: one predict endpoint per catalog entry, over the registry's CURRENT models.

    bentoml serve                      # from the project root (bentofile.yaml names this file)

One class, thin. Each endpoint is made from its catalog entry: the request item type
comes from the entry's task, whose checks run per request on the event loop and are
cheap by contract (an image's header, not its pixels); the work (decoding,
preprocessing, inference, batching where it pays) runs in executor.py's worker threads.
GET /models and POST /admin/reload live in admin.py, the Open Inference Protocol (/v2/...) in v2.py.
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

from service.core.catalog import CATALOG, CatalogEntry
from service.core.config import Settings
from service.core.errors import Overloaded
from service.core.runtime import CurrentWatcher, LoadedModel, ModelRuntime
from service.core.workers import WorkerGroup
from service.http.admin import admin_app
from service.http.executor import ROUTING_HEADER, Executor, ItemError, route
from service.http.guard import ClientErrorLogFilter, RequestGuard
from service.http.playground import playground_routes
from service.http.v2 import CONTENT_TYPES as V2_CONTENT_TYPES
from service.http.v2 import v2_app
from service.patches import active as active_patches
from service.patches.bentoml_error_log import filter_request_errors
from service.patches.bentoml_request_timer import cancel_finished_request_timers
from service.patches.uvicorn_header_timeout import limit_header_time

SETTINGS = Settings.from_env()
# Patches of uvicorn and BentoML internals (service/patches, docs/patches.md): each checks the installed
# version and the shape of what it patches first, and stops the service with what to do when they differ.
cancel_finished_request_timers()
limit_header_time(SETTINGS.header_timeout_s)
log = logging.getLogger("modelserve.service")


class ModelServe:
    """Keras models exported to ONNX, served on onnxruntime: images, texts and table rows in, predictions out."""

    def __init__(self) -> None:
        _configure_logging()
        log.info("patches of third-party internals in effect: %s", "; ".join(active_patches()) or "none")
        self.runtime = ModelRuntime(SETTINGS)
        self.workers = WorkerGroup(SETTINGS.worker_count())  # before loading: a request made before this load counts as carried out
        self.runtime.load_all(self.workers.last_served())  # verified, session opened, smoke-tested and warm before /readyz says ready
        self.executor = Executor(SETTINGS, self.runtime)
        # Start-up leaves ~130,000 long-lived objects (BentoML, pydantic, onnxruntime) that every
        # full collection would walk again: 66-75 ms pauses under load, measured. Frozen, a full
        # collection walks only what requests allocate (about 2 ms).
        gc.collect()
        gc.freeze()
        self.watcher = CurrentWatcher(self.runtime, SETTINGS.reload_poll_s, self.workers).start()

    def __is_ready__(self) -> bool:
        return bool(self.runtime.served())


def served_model(name: str) -> LoadedModel:
    """The version of `name` this worker serves now (404 when it serves none)."""
    runtime: ModelRuntime = bentoml.get_current_service().runtime
    if name not in runtime:
        raise bentoml.exceptions.NotFound(f"model {name} is not served here (served: {list(runtime.served())})")
    return runtime.get(name)


def predict_api(entry: CatalogEntry) -> Any:
    """POST /<endpoint>: a BentoML API whose request field and item type come from the entry's task."""
    task, field = entry.task, entry.task.request_field
    assets: Callable[[], Any] = lambda: served_model(entry.name).assets  # noqa: E731

    def check_request(items: list[Any]) -> list[Any]:
        task.check_request(items, SETTINGS)
        return items

    item = task.request_item(SETTINGS, assets)
    items = Annotated[list[item], Field(min_length=1, max_length=SETTINGS.max_items), AfterValidator(check_request)]  # type: ignore[valid-type]

    async def predict(self: ModelServe, ctx: bentoml.Context, **request: Any) -> Response:
        model, shadow = route(self.runtime, entry.name, ctx.request.headers.get(ROUTING_HEADER))
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

    predict.__name__ = predict.__qualname__ = entry.endpoint
    predict.__doc__ = inspect.cleandoc(entry.doc)
    predict.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=bentoml.Context),  # for the routing-key header
            inspect.Parameter(field, inspect.Parameter.KEYWORD_ONLY, annotation=items),
        ],
        return_annotation=list[task.answer_model],  # type: ignore[name-defined]
    )
    return bentoml.api(predict)


for _entry in CATALOG.values():
    setattr(ModelServe, _entry.endpoint, predict_api(_entry))

ModelServe = bentoml.asgi_app(admin_app(SETTINGS, playground_routes()), path="/")(  # type: ignore[misc]
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
ModelServe.add_asgi_middleware(
    RequestGuard,
    max_request_bytes=SETTINGS.max_request_bytes,
    content_types={f"/{e.endpoint}": e.task.content_types for e in CATALOG.values()}
    | {"/admin/reload": ("application/json",), "/admin/candidate": ("application/json",), "/v2/": V2_CONTENT_TYPES},
    file_fields={f"/{e.endpoint}": (e.task.request_field,) for e in CATALOG.values() if "multipart/form-data" in e.task.content_types},
    max_files=SETTINGS.max_items,
    body_timeout_s=SETTINGS.body_timeout_s,
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

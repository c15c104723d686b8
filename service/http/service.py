"""The BentoML service: one batched predict endpoint per catalog entry, over the registry's CURRENT models.

    bentoml serve                      # from the project root (bentofile.yaml names this file)

One class, thin. Each endpoint is made from its catalog entry: the request item type
comes from the entry's task (validated per request, before BentoML's batcher merges
requests, so one bad item never fails a whole batch) and predictions from the
runtime, which the batch scorer uses too. Every predict API is batchable, so
BentoML's adaptive batcher turns concurrent one-item requests into one onnxruntime
call. GET /models and POST /admin/reload live in admin.py.
"""

from __future__ import annotations

import gc
import inspect
import logging
from collections.abc import Callable
from typing import Annotated, Any

import bentoml
from pydantic import Field

from service.core.catalog import CATALOG, CatalogEntry
from service.core.config import Settings
from service.core.runtime import CurrentWatcher, LoadedModel, ModelRuntime, max_batch_size, resolve_providers
from service.core.workers import WorkerGroup
from service.http.admin import admin_app
from service.http.batching import bound_queue_delay
from service.http.connections import limit_header_time
from service.http.guard import ClientErrorLogFilter, RequestGuard
from service.http.timeouts import cancel_finished_request_timers

SETTINGS = Settings.from_env()
PROVIDERS = resolve_providers(SETTINGS.providers)
bound_queue_delay(SETTINGS.batch_max_delay_ms / 1000)
cancel_finished_request_timers()
limit_header_time(SETTINGS.header_timeout_s)
log = logging.getLogger("modelserve.service")


class ModelServe:
    """Keras models exported to ONNX, served on onnxruntime with adaptive batching."""

    def __init__(self) -> None:
        _configure_logging()
        self.runtime = ModelRuntime(SETTINGS)
        self.workers = WorkerGroup(SETTINGS.workers)  # before loading: a request made before this load counts as carried out
        self.runtime.load_all(self.workers.last_served())  # verified, session opened, smoke-tested and warm before /readyz says ready
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
    """POST /<endpoint>: a batchable BentoML API whose request field and item type come from the entry's task."""
    task, field = entry.task, entry.task.request_field
    assets: Callable[[], Any] = lambda: served_model(entry.name).assets  # noqa: E731
    items = Annotated[list[task.request_item(SETTINGS, assets)], Field(min_length=1, max_length=SETTINGS.max_items)]  # type: ignore[misc]

    def predict(self: ModelServe, *batch: Any, **named: Any) -> list[dict[str, Any]]:
        model = served_model(entry.name)
        return model.predict(task.conform(batch[0] if batch else named[field], model.assets))

    predict.__name__ = predict.__qualname__ = entry.endpoint
    predict.__doc__ = inspect.cleandoc(entry.doc)
    predict.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter(field, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=items),
        ],
        return_annotation=list[task.answer_model],  # type: ignore[name-defined]
    )
    api = bentoml.api(
        batchable=True, max_batch_size=max_batch_size(SETTINGS, entry.name, task, PROVIDERS), max_latency_ms=SETTINGS.queue_timeout_ms
    )(predict)
    # BentoML 1.4 finds a response's media type by regenerating the output model's JSON schema
    # on every request (IOMixin.mime_type): about 15% of the worker's CPU under load (py-spy).
    api.output_spec.media_type = "application/json"
    return api


for _entry in CATALOG.values():
    setattr(ModelServe, _entry.endpoint, predict_api(_entry))

ModelServe = bentoml.asgi_app(admin_app(SETTINGS), path="/")(  # type: ignore[misc]
    bentoml.service(
        name="modelserve",
        workers=SETTINGS.workers,
        threads=len(CATALOG),  # one batch in flight per predict API
        traffic={"timeout": SETTINGS.request_timeout_s},
        resources={"cpu": "1"},
    )(ModelServe)
)
ModelServe.add_asgi_middleware(
    RequestGuard,
    max_request_bytes=SETTINGS.max_request_bytes,
    content_types={f"/{e.endpoint}": e.task.content_types for e in CATALOG.values()} | {"/admin/reload": ("application/json",)},
    file_fields={f"/{e.endpoint}": (e.task.request_field,) for e in CATALOG.values() if "multipart/form-data" in e.task.content_types},
    max_files=SETTINGS.max_items,
    body_timeout_s=SETTINGS.body_timeout_s,
)


def _configure_logging() -> None:
    logging.getLogger("bentoml._internal.server.http_app").addFilter(ClientErrorLogFilter())
    ours = logging.getLogger("modelserve")
    if not ours.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        ours.propagate = False

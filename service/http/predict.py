"""POST /models/{name}/predict: the friendly API of every served model, whatever its name, with its kind's body.

    images: multipart/form-data, one `images` part per image, or {"images": [base64, ...]}
    texts:  {"texts": ["...", ...]}
    rows:   {"rows": [{"feature": value, ...} or [value, ...], ...]}

BentoML's APIs are fixed when the service class is made, and a model added to the
registry while the service runs needs a route too; so this is a plain Starlette route
mounted beside GET /models, like the Open Inference Protocol's (v2.py). It takes the
named endpoints' path: the request guard (size, time, content type, multipart checks),
the kind's friendly adapter checking each item on the event loop (cheap by contract),
the request's limits, then `Executor.predict` (admission, worker threads, batching
where it pays) on the version the model's canary or shadow routing picks. Answers and
messages are the named endpoints' ("texts[1]: is empty").
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.core.config import Settings
from service.core.errors import InputError, UsageError
from service.core.runtime import LoadedModel
from service.core.tasks.friendly import ADAPTERS, FriendlyApi, friendly_api
from service.http.executor import ROUTING_HEADER, Executor, ItemError, route
from service.http.guard import MAX_FORM_FIELDS
from service.http.v2 import protocol_errors
from service.http.v2_infer import serving

PREDICT_PATH = "/models/{name}/predict"
PREFIX = "/models/"  # the request guard's rules for every model's route
CONTENT_TYPES = tuple(sorted({t for api in ADAPTERS.values() for t in api.content_types}))
FILE_FIELDS = tuple(sorted({api.field for api in ADAPTERS.values() if "multipart/form-data" in api.content_types}))
LARGE_JSON_BYTES = 256 * 1024  # a larger body (base64 images) is parsed in a worker thread, off the event loop
MAX_ITEM_ERRORS = 20  # item errors one answer lists


def check_items(values: Any, api: FriendlyApi, model: LoadedModel, settings: Settings) -> list[Any]:
    """The request's items checked by the model's kind, every bad one named ("texts[1]: is empty; texts[3]: ...")."""
    field, noun = api.field, model.task.item_noun
    if not isinstance(values, list) or not 1 <= len(values) <= settings.max_items:
        got = f"{len(values)} {noun}s" if isinstance(values, list) else type(values).__name__
        raise InputError(f"{field}: send a list of 1 to {settings.max_items} {noun}s (MODELSERVE_MAX_ITEMS), got {got}")
    items, errors = [], []
    for index, value in enumerate(values):
        try:
            items.append(api.check_item(value, model.assets, settings))
        except InputError as exc:
            errors.append(f"{field}[{index}]: {exc}")
    if errors:
        more = f"; ... {len(errors) - MAX_ITEM_ERRORS} more" if len(errors) > MAX_ITEM_ERRORS else ""
        raise InputError("; ".join(errors[:MAX_ITEM_ERRORS]) + more)
    model.task.check_request(items, settings)
    return items


async def _from_form(request: Request, api: FriendlyApi, model: LoadedModel, settings: Settings) -> list[Any]:
    if "multipart/form-data" not in api.content_types:
        raise UsageError(f"{model.name} takes {' or '.join(api.content_types)}, not multipart/form-data")
    async with request.form(max_files=settings.max_items, max_fields=MAX_FORM_FIELDS) as form:
        return check_items(form.getlist(api.field), api, model, settings)  # read here: the form's files close after


async def _from_json(request: Request, api: FriendlyApi, model: LoadedModel, executor: Executor, settings: Settings) -> list[Any]:
    body = await request.body()
    try:
        document = await executor.run(model.name, json.loads, body) if len(body) > LARGE_JSON_BYTES else json.loads(body)
    except ValueError as exc:
        raise InputError(f"invalid JSON: {exc}") from None
    if not isinstance(document, dict) or api.field not in document:
        raise InputError(f'send {{"{api.field}": [...]}}, a list of 1 to {settings.max_items} {model.task.item_noun}s')
    return check_items(document[api.field], api, model, settings)


def predict_routes(settings: Settings) -> list[BaseRoute]:
    """The route, for the admin app's mount (service/http/admin.py)."""

    @protocol_errors
    async def predict(request: Request) -> Response:
        runtime, executor = serving()
        model, shadow = route(runtime, request.path_params["name"], request.headers.get(ROUTING_HEADER))
        api = friendly_api(model.task)
        if request.headers.get("content-type", "").lower().startswith("multipart/"):
            items = await _from_form(request, api, model, settings)
        else:
            items = await _from_json(request, api, model, executor, settings)
        try:
            answers = await executor.predict(model, items, shadow)
        except ItemError as exc:
            raise InputError(f"{api.field}[{exc.index}]: {exc}") from None
        return Response(json.dumps(answers).encode(), media_type="application/json")

    return [Route(PREDICT_PATH, predict, methods=["POST"])]

"""GET /models[/{name}], POST /admin/reload and POST /admin/candidate: a small Starlette app mounted beside the predict APIs.

BentoML APIs are POST-only and typed; these two are plain routes over the served
models of this worker (the BentoML service instance holds them). A reload reaches
every worker: the worker that takes the call reloads, asks the others through the
worker group (service/core/workers.py) and answers once they confirm; 200 when every
worker serves the same versions, 409 when one refused, 202 when one did not confirm in
PEER_WAIT_S. GET /models lists every worker's versions and refusals under `workers`.
A reload of every model (`{}`) first follows the registry's list of models (new ones
loaded, removed ones dropped), as the CURRENT watcher does every poll; a reload of a
model the registry has but this worker does not serve yet loads it.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence
from typing import Any

import anyio.to_thread
import bentoml
from bentoml.exceptions import BentoMLException
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from service.core.config import Settings
from service.core.errors import NotFoundError, RegistryError, ReloadRefused, UsageError
from service.core.registry import Candidate
from service.core.runtime import ModelRuntime
from service.core.workers import WorkerGroup

PEER_WAIT_S = 30.0  # how long a reload waits for the other workers to confirm
CANDIDATE_USAGE = 'send {"model": NAME, "version": V, "mode": "canary"|"shadow", "percent": P} or {"model": NAME, "clear": true}'
RELOAD_USAGE = 'send {"model": NAME} or {} for every model'


def _runtime() -> ModelRuntime | None:
    try:
        return bentoml.get_current_service().runtime
    except BentoMLException:  # the service instance is still loading its models
        return None


def _workers() -> WorkerGroup | None:
    try:
        return getattr(bentoml.get_current_service(), "workers", None)
    except BentoMLException:
        return None


def json_body(raw: bytes, usage: str) -> Any:
    """A request body as JSON (None when empty); UsageError (400) saying why when it is not: bad syntax, not UTF-8, nested too deep."""
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: about a thousand nested brackets; it answered 500
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise UsageError(f"invalid JSON body ({reason}); {usage}") from None


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


async def models_view(request: Request) -> JSONResponse:
    """GET /models: what is served, with versions, inputs, labels, test metrics and real providers."""
    runtime = _runtime()
    if runtime is None:
        return _error(503, "models are still loading")
    workers = _workers()
    every = [{k: s.get(k) for k in ("pid", "served", "refused", "candidates")} for s in workers.everyone()] if workers is not None else []
    return JSONResponse(runtime.describe() | {"workers": every})


async def model_view(request: Request) -> JSONResponse:
    """GET /models/{name}: one served model, as GET /models lists it; 404 naming the served ones (and why this one is not)."""
    runtime = _runtime()
    if runtime is None:
        return _error(503, "models are still loading")
    name = request.path_params["name"]
    try:
        return JSONResponse(runtime.describe_model(runtime.get(name)))
    except NotFoundError as exc:
        refused = runtime.refused.get(name)
        return _error(404, str(exc) + (f"; it was refused: {refused['reason']}" if refused else ""), refused=refused)


def _authorized(request: Request, settings: Settings) -> JSONResponse | None:
    if not settings.admin_token:
        return _error(403, "the admin API is disabled: start the service with MODELSERVE_ADMIN_TOKEN set")
    supplied = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not supplied or not hmac.compare_digest(supplied.encode(), settings.admin_token.encode()):
        return _error(401, "missing or wrong admin token (send Authorization: Bearer <MODELSERVE_ADMIN_TOKEN>)")
    return None


def _admitted(request: Request, settings: Settings) -> ModelRuntime | JSONResponse:
    """This worker's runtime for an admin call with the right token; the refusal to send otherwise."""
    refused = _authorized(request, settings)
    if refused is not None:
        return refused
    runtime = _runtime()
    return _error(503, "models are still loading") if runtime is None else runtime


async def _reload(runtime: ModelRuntime, names: list[str], workers: WorkerGroup | None) -> JSONResponse:
    results = []
    for name in names:
        try:
            results.append(await anyio.to_thread.run_sync(runtime.reload, name))
        except ReloadRefused as exc:
            served = runtime.get(name).version if name in runtime else None
            kept = f"v{served} keeps serving" if served is not None else "it is not served"
            return _error(
                exc.http_status,
                f"reload of {name} refused, {kept}: {exc}",
                model=name,
                served_version=served,
                results=results,
            )
    if workers is None or workers.expected <= 1:
        return JSONResponse({"results": results, "workers": {"expected": 1, "confirmed": 1}})
    return await _reach_peers(runtime, names, workers, results)


async def _reach_peers(runtime: ModelRuntime, names: list[str], workers: WorkerGroup, results: list[dict[str, Any]]) -> JSONResponse:
    """Ask the other workers to reload `names` and wait for them: 200 all agree, 409 one refused, 202 one did not confirm."""
    generation = workers.request_reload(names)
    workers.publish(runtime.versions(), dict(runtime.refused))
    peers, missing = await anyio.to_thread.run_sync(workers.wait_for, generation, PEER_WAIT_S)
    mine = runtime.versions()
    mine = {name: mine.get(name) for name in names}
    summary = {
        "expected": workers.expected,
        "confirmed": 1 + len(peers),
        "served": {str(workers.pid): runtime.versions()} | {str(p["pid"]): p.get("served") for p in peers},
    }
    disagree = [p for p in peers if any((p.get("served") or {}).get(n) != v for n, v in mine.items())]
    if disagree:
        reasons = "; ".join(f"worker {p['pid']} serves {p.get('served')}, refused: {json.dumps(p.get('refused'))[:500]}" for p in disagree)
        message = f"reloaded in worker {workers.pid} ({mine}), but not in every worker: {reasons}"
        return _error(409, message, results=results, workers=summary)
    if missing:
        message = (
            f"reloaded in {1 + len(peers)} of {workers.expected} workers; {missing} did not confirm within {PEER_WAIT_S:g} s "
            "(starting, or busy): they load CURRENT when they start; GET /models lists each worker's versions"
        )
        return JSONResponse({"results": results, "warning": message, "workers": summary}, status_code=202)
    return JSONResponse({"results": results, "workers": summary})


def _candidate_change(runtime: ModelRuntime, body: Any) -> tuple[str, Candidate | None]:
    """(model, the candidate to set, or None to clear) from a POST /admin/candidate body; UsageError when it says neither."""
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise UsageError(CANDIDATE_USAGE)
    name = body["model"]
    if name not in runtime:
        raise NotFoundError(f"not served here: {name!r}; served: {list(runtime.served())}")
    if body.get("clear") is True:
        return name, None
    version, percent = body.get("version"), body.get("percent", 0)
    if not isinstance(version, int) or isinstance(version, bool) or not isinstance(percent, int | float) or isinstance(percent, bool):
        raise UsageError("version must be an integer and percent a number")
    candidate = Candidate(version, str(body.get("mode")), float(percent))
    try:
        candidate.check(f"{name} candidate")
    except RegistryError as exc:
        raise UsageError(str(exc)) from None
    return name, candidate


async def _change_candidate(runtime: ModelRuntime, name: str, candidate: Candidate | None) -> JSONResponse:
    """Write CANDIDATE (the registry is the source of truth for every worker), follow it here, then in the other workers."""
    try:
        if candidate is None:
            runtime.registry.clear_candidate(name)
        else:
            runtime.registry.set_candidate(name, candidate)
    except OSError as exc:
        return _error(
            409, f"cannot write CANDIDATE in {runtime.registry.root} ({exc.strerror or exc}); change it where the registry is writable"
        )
    try:
        result = await anyio.to_thread.run_sync(runtime.reload_candidate, name)
    except ReloadRefused as exc:
        runtime.registry.clear_candidate(name, "refused")
        return _error(exc.http_status, f"candidate of {name} refused, CURRENT answers everything: {exc}")
    workers = _workers()
    if workers is not None and workers.expected > 1:
        generation = workers.request_reload([name])
        peers, missing = await anyio.to_thread.run_sync(workers.wait_for, generation, PEER_WAIT_S)
        result |= {
            "workers": {"expected": workers.expected, "confirmed": 1 + len(peers), "candidates": [p.get("candidates") for p in peers]}
        }
        if missing:
            return JSONResponse(result | {"warning": f"{missing} worker(s) did not confirm within {PEER_WAIT_S:g} s"}, status_code=202)
    return JSONResponse(result)


def admin_app(settings: Settings, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """GET /models, POST /admin/reload and /admin/candidate, plus `extra_routes` (the playground's) in the same app: one mount at "/"."""

    async def candidate_view(request: Request) -> JSONResponse:
        """POST /admin/candidate: serve a version beside CURRENT (canary P% or shadow), change its mode, or clear it."""
        runtime = _admitted(request, settings)
        if isinstance(runtime, JSONResponse):
            return runtime
        try:
            name, candidate = _candidate_change(runtime, json_body(await request.body(), CANDIDATE_USAGE))
            return await _change_candidate(runtime, name, candidate)
        except (UsageError, NotFoundError, RegistryError) as exc:
            return _error(exc.http_status, str(exc))

    async def reload_view(request: Request) -> JSONResponse:
        """POST /admin/reload {"model": NAME} (or {} for all): load CURRENT beside the old version, swap if it passes."""
        runtime = _admitted(request, settings)
        if isinstance(runtime, JSONResponse):
            return runtime
        raw = await request.body()  # however it is framed: Content-Length or chunked (the guard has read and counted it)
        try:
            body = json_body(raw, RELOAD_USAGE) if raw.strip() else {}
        except UsageError as exc:
            return _error(exc.http_status, str(exc))
        if not isinstance(body, dict) or not isinstance(body.get("model", ""), str):
            return _error(400, 'send {"model": NAME} or {} for every model')
        if not body.get("model"):
            await anyio.to_thread.run_sync(runtime.sync)
        names = [body["model"]] if body.get("model") else list(runtime.served())
        unknown = [n for n in names if n not in runtime and n not in runtime.wanted()]
        if unknown:
            return _error(404, f"not served here: {unknown}; served: {list(runtime.served())}")
        return await _reload(runtime, names, _workers())

    return Starlette(
        routes=[
            Route("/models", models_view, methods=["GET"]),
            Route("/models/{name}", model_view, methods=["GET"]),
            Route("/admin/reload", reload_view, methods=["POST"]),
            Route("/admin/candidate", candidate_view, methods=["POST"]),
            *extra_routes,
        ]
    )

"""GET /playground (a page to try every served model) and the registry's plots, read-only.

The page is plain HTML, CSS and JavaScript shipped in this package (service/http/static/),
with no build step and nothing fetched from anywhere but this service: it reads GET
/models and calls the same public endpoints as every other client. Its Content-Security-Policy
holds it to that (same origin only; `blob:` for the thumbnails of the user's own files).

GET /models/{name}/versions/{version}/plots/{file} serves a plot of a served model's
version, and only a file that the version's metadata lists under "plots": a name that
is not listed (model.onnx, metadata.json, "../../x") is a 404, whatever is on disk.
"""

from __future__ import annotations

from pathlib import Path

import bentoml
from bentoml.exceptions import BentoMLException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from service.core.errors import RegistryError
from service.core.runtime import ModelRuntime

STATIC = Path(__file__).parent / "static"
PAGE = STATIC / "playground.html"
PAGE_PATH = "/playground"
PLOT_PATH = "/models/{name}/versions/{version:int}/plots/{file}"
PLOT_TYPES = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
# The page talks to this origin only; thumbnails of the user's files are blob: URLs.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'"
)
PLOT_MAX_AGE_S = 3600  # a version's files never change, but a registry may be rebuilt under the same numbers


def _runtime() -> ModelRuntime | None:
    try:
        return bentoml.get_current_service().runtime
    except BentoMLException:  # the service instance is still loading its models
        return None


def _not_found(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=404)


async def page(request: Request) -> Response:
    """GET /playground: the page itself (its script and style come from /playground/static/)."""
    return FileResponse(
        PAGE, media_type="text/html; charset=utf-8", headers={"content-security-policy": PAGE_POLICY, "cache-control": "no-cache"}
    )


async def plot(request: Request) -> Response:
    """GET /models/{name}/versions/{version}/plots/{file}: one plot that the version's metadata lists, or 404."""
    runtime = _runtime()
    if runtime is None:
        return JSONResponse({"error": "models are still loading"}, status_code=503)
    name, version, file = request.path_params["name"], request.path_params["version"], request.path_params["file"]
    if name not in runtime:
        return _not_found(f"model {name} is not served here (served: {list(runtime.served())})")
    try:
        ref = runtime.registry.get(name, version)
        listed = ref.read_metadata().get("plots") or []
    except RegistryError as exc:
        return _not_found(str(exc))
    path = ref.path / file
    if file not in listed or Path(file).name != file or path.suffix.lower() not in PLOT_TYPES or not path.is_file():
        return _not_found(f"{name} v{version} has no plot {file!r} (plots: {listed})")
    return FileResponse(path, media_type=PLOT_TYPES[path.suffix.lower()], headers={"cache-control": f"public, max-age={PLOT_MAX_AGE_S}"})


def playground_routes() -> list[BaseRoute]:
    """The page, its static files and the plots; mounted beside GET /models (service/http/admin.py)."""
    return [
        Route(PAGE_PATH, page, methods=["GET", "HEAD"]),
        Route(f"{PAGE_PATH}/", lambda request: RedirectResponse(PAGE_PATH), methods=["GET", "HEAD"]),
        Mount(f"{PAGE_PATH}/static", StaticFiles(directory=STATIC), name="playground-static"),
        Route(PLOT_PATH, plot, methods=["GET", "HEAD"]),
    ]

"""The BentoML service: batched predict endpoints over the registry's CURRENT models.

    bentoml serve                      # from the project root (bentofile.yaml names this file)

One class, thin: requests are validated and decoded by the types in schemas.py
(per request, so one bad item never fails a whole batch), predictions come from
runtime.py, which the batch scorer uses too. Each predict API is batchable, so
BentoML's adaptive batcher turns concurrent one-item requests into one
onnxruntime call. GET /models and POST /admin/reload live on a small Starlette
app mounted beside the APIs, because BentoML APIs are POST-only.
"""

import gc
import hmac
import logging
import threading
import time
from typing import Annotated, Any

import bentoml
import numpy as np
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.batching import bound_queue_delay
from service.config import Settings
from service.guard import ClientErrorLogFilter, RequestGuard
from service.schemas import FeatureRow, ImageItem, ImagePrediction, PricePrediction, ReviewText, SentimentPrediction, bind
from service.timeouts import cancel_finished_request_timers

SETTINGS = Settings.from_env()
bound_queue_delay(SETTINGS.batch_max_delay_ms / 1000)
cancel_finished_request_timers()
IMAGE_MODEL, TEXT_MODEL, TABULAR_MODEL = "image_classifier", "imdb_sentiment", "boston_housing"
JSON_ONLY = ("application/json",)
CONTENT_TYPES = {
    "/classify_image": ("multipart/form-data", "application/json"),
    "/sentiment": JSON_ONLY,
    "/predict_price": JSON_ONLY,
    "/admin/reload": JSON_ONLY,
}
log = logging.getLogger("modelserve.service")

ImageList = Annotated[list[ImageItem], Field(min_length=1, max_length=SETTINGS.max_items)]
TextList = Annotated[list[ReviewText], Field(min_length=1, max_length=SETTINGS.max_items)]
RowList = Annotated[list[FeatureRow], Field(min_length=1, max_length=SETTINGS.max_items)]

_service: "ModelServe | None" = None  # the instance in this worker, for the Starlette routes


def _runtime_or_503() -> Any:
    if _service is None:
        return None
    return _service.runtime


async def models_view(request: Request) -> JSONResponse:
    """GET /models: what is served, with versions, inputs, labels, test metrics and real providers."""
    runtime = _runtime_or_503()
    if runtime is None:
        return JSONResponse({"error": "models are still loading"}, status_code=503)
    return JSONResponse(runtime.describe())


async def reload_view(request: Request) -> JSONResponse:
    """POST /admin/reload {"model": NAME} (or {} for all): load CURRENT beside the old version, swap if it passes."""
    import anyio.to_thread

    if not SETTINGS.admin_token:
        return JSONResponse({"error": "the admin API is disabled: start the service with MODELSERVE_ADMIN_TOKEN set"}, status_code=403)
    supplied = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not supplied or not hmac.compare_digest(supplied.encode(), SETTINGS.admin_token.encode()):
        return JSONResponse({"error": "missing or wrong admin token (send Authorization: Bearer <MODELSERVE_ADMIN_TOKEN>)"}, status_code=401)
    runtime = _runtime_or_503()
    if runtime is None:
        return JSONResponse({"error": "models are still loading"}, status_code=503)
    try:
        body = await request.json() if int(request.headers.get("content-length", "0") or 0) else {}
    except ValueError:
        return JSONResponse({"error": "invalid JSON body; send {\"model\": NAME} or {}"}, status_code=400)
    if not isinstance(body, dict) or not isinstance(body.get("model", ""), str):
        return JSONResponse({"error": "send {\"model\": NAME} or {} for every model"}, status_code=400)
    names = [body["model"]] if body.get("model") else list(runtime.served())
    unknown = [n for n in names if n not in runtime]
    if unknown:
        return JSONResponse({"error": f"not served here: {unknown}; served: {list(runtime.served())}"}, status_code=404)
    from service.runtime import ReloadRefused

    results = []
    for name in names:
        try:
            results.append(await anyio.to_thread.run_sync(runtime.reload, name))
        except ReloadRefused as exc:
            served = runtime.get(name).version
            return JSONResponse({"error": f"reload of {name} refused, v{served} keeps serving: {exc}", "model": name, "served_version": served, "results": results}, status_code=409)
    return JSONResponse({"results": results})


admin_app = Starlette(routes=[Route("/models", models_view, methods=["GET"]), Route("/admin/reload", reload_view, methods=["POST"])])


@bentoml.asgi_app(admin_app, path="/")
@bentoml.service(
    name="modelserve",
    workers=SETTINGS.workers,
    threads=3,  # one batch in flight per predict API
    traffic={"timeout": SETTINGS.request_timeout_s},
    resources={"cpu": "1"},
)
class ModelServe:
    """Keras models exported to ONNX, served on onnxruntime with adaptive batching."""

    def __init__(self) -> None:
        from service.runtime import ModelRuntime

        global _service
        _configure_logging()
        self.runtime = ModelRuntime(SETTINGS)
        self.runtime.load_all()  # verified, session opened, smoke-tested and warm before /readyz says ready
        bind(SETTINGS, self._image_spec, self._scaler)
        _service = self
        # Start-up leaves ~130,000 long-lived objects (BentoML, pydantic, onnxruntime) that every
        # full collection would walk again: 66-75 ms pauses under load, measured. Frozen, a full
        # collection walks only what requests allocate (about 2 ms).
        gc.collect()
        gc.freeze()
        if SETTINGS.reload_poll_s > 0:
            threading.Thread(target=self._watch_current, name="current-watcher", daemon=True).start()

    def __is_ready__(self) -> bool:
        return bool(self.runtime.served())

    def _model(self, name: str) -> Any:
        if name not in self.runtime:
            raise bentoml.exceptions.NotFound(f"model {name} is not served here (served: {list(self.runtime.served())})")
        return self.runtime.get(name)

    def _image_spec(self) -> Any:
        return self._model(IMAGE_MODEL).preprocessor.spec

    def _scaler(self) -> Any:
        return self._model(TABULAR_MODEL).preprocessor.scaler

    def _watch_current(self) -> None:
        """Follow CURRENT in every worker (the admin call reaches only one); never retry a refused version."""
        from service.runtime import ReloadRefused

        refused: dict[str, int | None] = {}
        while True:
            time.sleep(SETTINGS.reload_poll_s)
            for name in self.runtime.pending_changes():
                current = self.runtime.registry.current_version(name)
                if refused.get(name) == current:
                    continue
                try:
                    self.runtime.reload(name)
                    refused.pop(name, None)
                except ReloadRefused:
                    refused[name] = current

    @bentoml.api(batchable=True, max_batch_size=SETTINGS.image_batch_size, max_latency_ms=SETTINGS.image_batch_wait_ms)
    def classify_image(self, images: ImageList) -> list[ImagePrediction]:
        """Classify images: label, its score and the probability of every class, per image.

        Send files as multipart/form-data, one `images` part per image
        (curl -F images=@cat.jpg -F images=@dog.png), or JSON {"images": [base64, ...]}.
        JPEG, PNG, WebP, BMP and GIF (first frame); grayscale, palette, RGBA (over white),
        CMYK and EXIF-rotated photos are converted to upright RGB.
        """
        model = self._model(IMAGE_MODEL)
        spec = model.preprocessor.spec
        size = (spec.width, spec.height)
        # Decoded at validation for the version served then; a reload in between may change the size.
        arrays = [np.asarray(img if img.size == size else img.resize(size)) for img in images]
        return model.predict(arrays)

    @bentoml.api(batchable=True, max_batch_size=SETTINGS.text_batch_size, max_latency_ms=SETTINGS.text_batch_wait_ms)
    def sentiment(self, texts: TextList) -> list[SentimentPrediction]:
        """Sentiment of English movie reviews: {"texts": ["...", ...]} -> label and probability of positive, per text."""
        return self._model(TEXT_MODEL).predict(texts)

    @bentoml.api(batchable=True, max_batch_size=SETTINGS.tabular_batch_size, max_latency_ms=SETTINGS.tabular_batch_wait_ms)
    def predict_price(self, rows: RowList) -> list[PricePrediction]:
        """Median house price (in $1000s) per row of the 13 Boston housing features.

        A row is an object of named features {"CRIM": 0.1, ..., "LSTAT": 5.0} (names
        case-insensitive) or a list of 13 numbers in the order CRIM, ZN, INDUS, CHAS,
        NOX, RM, AGE, DIS, RAD, TAX, PTRATIO, B, LSTAT.
        """
        return self._model(TABULAR_MODEL).predict(rows)


ModelServe.add_asgi_middleware(RequestGuard, max_request_bytes=SETTINGS.max_request_bytes, content_types=CONTENT_TYPES)

# BentoML 1.4 finds a response's media type by regenerating the output model's JSON
# schema on every request (IOMixin.mime_type): about 15% of the worker's CPU under
# load (py-spy). Every output here is JSON; say so once.
for _api in ModelServe.apis.values():
    _api.output_spec.media_type = "application/json"


def _configure_logging() -> None:
    logging.getLogger("bentoml._internal.server.http_app").addFilter(ClientErrorLogFilter())
    ours = logging.getLogger("modelserve")
    if not ours.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        ours.propagate = False

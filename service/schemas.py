"""Request and response types of the HTTP API, with the validation that makes bad input a 400.

Why validation lives here: BentoML parses and validates each request on its own,
before its adaptive batcher merges concurrent requests into one call. A problem
found after merging would fail every request in the batch with a 500; found here,
it fails only the request that sent it, with a 400 naming the item (`images[2]`).
So images are fully decoded here (a truncated JPEG is only found by decoding it)
and the batched function receives arrays that cannot fail.

The limits come from Settings; the image size and feature names from the model
being served, via `bind()`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, BeforeValidator, Field, PlainValidator, WithJsonSchema

from service.config import Settings
from service.preprocessing import (
    BOSTON_FEATURES,
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageSpec,
    InputError,
    StandardScaler,
    check_text,
    decode_image,
    feature_row,
)

_settings = Settings()
_image_spec: Callable[[], ImageSpec] = ImageSpec
_scaler: Callable[[], StandardScaler] = lambda: StandardScaler(BOSTON_FEATURES, np.zeros(13), np.ones(13))  # noqa: E731


def bind(settings: Settings, image_spec: Callable[[], ImageSpec], scaler: Callable[[], StandardScaler]) -> None:
    """Use these limits, and ask the served models for image size and feature scaling."""
    global _settings, _image_spec, _scaler
    _settings, _image_spec, _scaler = settings, image_spec, scaler


# ---------------------------------------------------------------- images


def _image_bytes(value: Any) -> bytes:
    if hasattr(value, "file") and hasattr(value, "filename"):  # a multipart upload (starlette UploadFile)
        value.file.seek(0)
        return value.file.read(_settings.max_image_bytes + 1)
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("data:"):  # data URL: data:image/png;base64,....
            text = text.partition(",")[2]
        if len(text) > (_settings.max_image_bytes * 4) // 3 + 4:
            raise InputError(f"is larger than the limit of {_settings.max_image_bytes:,} bytes")
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise InputError("is not valid base64 (send images as base64 strings in JSON, or as multipart file uploads)") from None
    raise InputError(f"must be a file upload or a base64 string, got {type(value).__name__}")


def _decode_image_item(value: Any) -> Image.Image:
    data = _image_bytes(value)
    if len(data) > _settings.max_image_bytes:
        raise InputError(f"is larger than the limit of {_settings.max_image_bytes:,} bytes")
    pixels = decode_image(data, _image_spec(), _settings.max_image_pixels or DEFAULT_MAX_IMAGE_PIXELS)
    return Image.fromarray(pixels, "RGB")


# The PIL.Image type makes BentoML treat `images` as multipart file fields; the
# validator runs first and hands on an already decoded, resized RGB image.
ImageItem = Annotated[Image.Image, BeforeValidator(_decode_image_item)]


# ---------------------------------------------------------------- texts


def _check_review(value: Any) -> str:
    return check_text(value, _settings.max_text_chars)


ReviewText = Annotated[str, BeforeValidator(_check_review)]


# ---------------------------------------------------------------- feature rows


def _feature_row(value: Any) -> np.ndarray:
    scaler = _scaler()
    return scaler.check(feature_row(value, scaler.feature_names))


_ROW_SCHEMA = {
    "oneOf": [
        {"type": "object", "additionalProperties": {"type": "number"}, "description": "the 13 features by name (CRIM ... LSTAT, case-insensitive)"},
        {"type": "array", "items": {"type": "number"}, "minItems": 13, "maxItems": 13, "description": "the 13 features in order CRIM ... LSTAT"},
    ]
}
FeatureRow = Annotated[Any, PlainValidator(_feature_row), WithJsonSchema(_ROW_SCHEMA)]


def item_list(item: Any, settings: Settings) -> Any:
    """A list of 1..max_items items."""
    return Annotated[list[item], Field(min_length=1, max_length=settings.max_items)]


# ---------------------------------------------------------------- responses


class SentimentPrediction(BaseModel):
    label: str = Field(description="'positive' or 'negative'")
    probability_positive: float = Field(description="model probability that the review is positive")
    model: str
    version: int


class ImagePrediction(BaseModel):
    label: str = Field(description="the most probable class")
    score: float = Field(description="probability of that class")
    probabilities: dict[str, float] = Field(description="probability of every class")
    model: str
    version: int


class PricePrediction(BaseModel):
    price: float = Field(description="predicted median house price")
    unit: str = Field(description="'$1000s', as in the Boston data")
    model: str
    version: int

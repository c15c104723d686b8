"""The friendly HTTP API's side of each kind: `POST /<endpoint>` with {"images" | "texts" | "rows": [...]}.

One adapter per kind says what the endpoint's field and item type are, which content
types it takes, what an answer looks like (OpenAPI), what a client needs to build a
request (GET /models, the playground) and how redeploy sends a smoke request. The
item type validates with the task's `check`, so this API and every other way in
refuse the same inputs with the same messages.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Annotated, Any, ClassVar

import numpy as np
from PIL import Image
from pydantic import BaseModel, BeforeValidator, Field, PlainValidator, WithJsonSchema, create_model

from service.core.config import Settings
from service.core.preprocessing import ImageSpec, TableEncoder
from service.core.tasks.base import Assets, Task, for_kind
from service.core.tasks.image_classification import IMAGE_SUFFIXES, EncodedImage, ImageClassification, upload_bytes
from service.core.tasks.tabular_regression import TabularRegression
from service.core.tasks.text_classification import SMOKE_TEXTS, MulticlassTextClassification, TextClassification

# How GET /models labels a version's feature ranges and starting row (see TabularApi.describe).
SEEN_RANGE = "min and max of the training rows"
ESTIMATED_RANGE = "mean ± 2 std of the training rows (this version recorded no min and max)"
TYPICAL_ROW = "the training mean of every feature (this version recorded no real example row)"


class FriendlyApi(ABC):
    """One kind on the friendly endpoint: its JSON field (a multipart part's name too), item type and answers."""

    field: ClassVar[str]  # "images", "texts", "rows"
    content_types: ClassVar[tuple[str, ...]] = ("application/json",)
    answer_model: type[BaseModel]  # the endpoint's answers, for OpenAPI

    def __init__(self, task: Task) -> None:
        self.task = task

    @abstractmethod
    def request_item(self, settings: Settings, assets: Callable[[], Assets]) -> Any:
        """The pydantic type of one request item, validated by the task's `check`; `assets()` gives the served version's assets."""

    def check_item(self, value: Any, assets: Assets, settings: Settings) -> Any:
        """One item of a request (a JSON value, or a multipart upload) -> the task's checked item; InputError otherwise."""
        return self.task.check(value, assets, settings)

    def describe(self, assets: Assets, metadata: Mapping[str, Any]) -> dict[str, Any]:
        """What a client needs to build a request for this version (GET /models shows it; the playground page reads it)."""
        return {"field": self.field, "item": self.task.item_noun, "content_types": list(self.content_types)}

    def smoke_request(self, items: Sequence[Any], assets: Assets = None) -> dict[str, Any]:
        """httpx keyword arguments that send the task's smoke `items` (of a version with `assets`) to the endpoint (redeploy's smoke test)."""
        return {"json": {self.field: list(items)}}


class ImageAnswer(BaseModel):
    label: str = Field(description="the most probable class")
    score: float = Field(description="probability of that class")
    probabilities: dict[str, float] = Field(description="probability of every class")
    model: str
    version: int


class ImageApi(FriendlyApi):
    field = "images"
    content_types = ("multipart/form-data", "application/json")
    answer_model = ImageAnswer

    def request_item(self, settings: Settings, assets: Callable[[], ImageSpec]) -> Any:
        """PIL.Image makes BentoML read `images` as multipart file fields; the validator hands on the checked, undecoded image."""

        def check(value: Any) -> EncodedImage:
            return self.check_item(value, None, settings)

        return Annotated[Image.Image, PlainValidator(check), WithJsonSchema({"type": "string", "format": "binary"})]

    def check_item(self, value: Any, assets: Any, settings: Settings) -> EncodedImage:
        """A multipart upload, or base64 (a data URL too) in JSON."""
        return self.task.check(upload_bytes(value, settings.max_image_bytes), assets, settings)

    def describe(self, assets: ImageSpec, metadata: Mapping[str, Any]) -> dict[str, Any]:
        return super().describe(assets, metadata) | {"file_suffixes": list(IMAGE_SUFFIXES)}

    def smoke_request(self, items: Sequence[np.ndarray], assets: Any = None) -> dict[str, Any]:
        files = []
        for i, pixels in enumerate(items):
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, "PNG")
            files.append((self.field, (f"smoke{i}.png", buffer.getvalue(), "image/png")))
        return {"files": files}


class TextAnswer(BaseModel):
    label: str = Field(description="the predicted label, e.g. 'positive' or 'negative'")
    probability_positive: float = Field(description="model probability of the positive (second) label")
    model: str
    version: int


class TextApi(FriendlyApi):
    field = "texts"
    answer_model = TextAnswer

    def request_item(self, settings: Settings, assets: Callable[[], Any]) -> Any:
        return Annotated[str, BeforeValidator(lambda value: self.check_item(value, None, settings))]

    def describe(self, assets: Any, metadata: Mapping[str, Any]) -> dict[str, Any]:
        negative, positive = metadata["labels"]
        threshold = float(metadata["preprocessing"].get("threshold", 0.5))
        return super().describe(assets, metadata) | {
            "positive": positive,
            "negative": negative,
            "threshold": threshold,
            "examples": examples(metadata),
        }


def examples(metadata: Mapping[str, Any]) -> list[str]:
    """Texts to start from: the version's own (a few of its test texts, recorded at training), else two movie reviews."""
    recorded = metadata.get("data", {}).get("examples")
    return [str(t) for t in recorded] if isinstance(recorded, list) and recorded else list(SMOKE_TEXTS)


class ClassesAnswer(BaseModel):
    label: str = Field(description="the most probable class")
    score: float = Field(description="probability of that class")
    probabilities: dict[str, float] = Field(description="probability of every class")
    model: str
    version: int


class MulticlassTextApi(TextApi):
    answer_model = ClassesAnswer

    def describe(self, assets: Any, metadata: Mapping[str, Any]) -> dict[str, Any]:
        return FriendlyApi.describe(self, assets, metadata) | {"labels": list(metadata["labels"]), "examples": examples(metadata)}


class TabularApi(FriendlyApi):
    field = "rows"
    task: TabularRegression

    def __init__(self, task: TabularRegression) -> None:
        super().__init__(task)
        fields: dict[str, Any] = {
            task.answer_field: (float, Field(description=task.description)),
            "unit": (str, Field(description="the unit of the prediction, from the model's metadata")),
            "model": (str, ...),
            "version": (int, ...),
        }
        self.answer_model = create_model(f"{task.answer_field.capitalize()}Answer", **fields)

    def request_item(self, settings: Settings, assets: Callable[[], TableEncoder]) -> Any:
        schema = {
            "oneOf": [
                {"type": "object", "additionalProperties": {"type": "number"}, "description": "the features by name (case-insensitive)"},
                {"type": "array", "items": {"type": "number"}, "description": "the features in the model's order (GET /models)"},
            ]
        }
        return Annotated[Any, PlainValidator(lambda value: self.check_item(value, assets(), settings)), WithJsonSchema(schema)]

    def describe(self, assets: TableEncoder, metadata: Mapping[str, Any]) -> dict[str, Any]:
        """The features with the range the model saw (a categorical one: its categories; each with its meaning when the
        version recorded one) and a row to start from: the version's real example row when it recorded one, else a
        typical row; each says which it is (`range_source`, `example.source`)."""
        low, high, seen = assets.ranges()
        example = metadata.get("data", {}).get("example")
        if not example:
            typical = assets.inverse_example()
            values = {
                name: assets.categories[name][int(v)] if name in assets.categories else float(v)
                for name, v in zip(assets.feature_names, typical)
            }
            example = {"values": values, "source": TYPICAL_ROW, "real": False}
        described = metadata["preprocessing"].get("feature_descriptions")
        meanings = described if isinstance(described, Mapping) else {}
        return super().describe(assets, metadata) | {
            "answer_field": self.task.answer_field,
            "unit": metadata["preprocessing"].get("unit", ""),
            "features": [
                (
                    {"name": name, "categories": list(assets.categories[name])}
                    if name in assets.categories
                    else {"name": name, "min": low[name], "max": high[name], "log1p": name in assets.log1p}
                )
                | ({"description": str(meanings[name])[:200]} if name in meanings else {})
                for name in assets.feature_names
            ],
            "range_source": SEEN_RANGE if seen else ESTIMATED_RANGE,
            "range_seen": seen,
            "example": example,
        }

    def smoke_request(self, items: Sequence[np.ndarray], assets: TableEncoder | None = None) -> dict[str, Any]:
        """Rows as lists; a categorical feature as its category (the checked item holds the category's index)."""
        categories = assets.categories if assets is not None else {}
        names = list(assets.feature_names) if assets is not None else []
        rows = []
        for row in items:
            named = zip(names, row) if names else (("", v) for v in row)
            rows.append([categories[n][int(v)] if n in categories else float(v) for n, v in named])
        return {"json": {self.field: rows}}


ADAPTERS: dict[type[Task], type[FriendlyApi]] = {
    ImageClassification: ImageApi,
    TextClassification: TextApi,
    MulticlassTextClassification: MulticlassTextApi,
    TabularRegression: TabularApi,
}


@cache
def friendly_api(task: Task) -> FriendlyApi:
    """The friendly API's adapter for `task` (one per task: the OpenAPI answer model is made once)."""
    return for_kind(task, ADAPTERS)(task)

"""The models this project knows: each served name with its task, its trainer and its friendly endpoint.

The only place that names a model. Adding a model is a line here, its task (if it is
a new kind) and its trainer module under training/.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.core.errors import NotFoundError
from service.core.tasks import ImageClassification, TabularRegression, Task, TextClassification


@dataclass(frozen=True)
class CatalogEntry:
    name: str  # the registry's model name
    task: Task
    trainer: str  # module with add_arguments(parser) and train(args) -> TrainingResult; imported only to train
    endpoint: str  # the friendly HTTP API's route, POST /<endpoint>
    doc: str  # the endpoint's description (OpenAPI)


CATALOG: dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in (
        CatalogEntry(
            "image_classifier",
            ImageClassification(),
            "training.image_classifier",
            "classify_image",
            """Classify images: label, its score and the probability of every class, per image.

            Send files as multipart/form-data, one `images` part per image
            (curl -F images=@cat.jpg -F images=@dog.png), or JSON {"images": [base64, ...]}.
            JPEG, PNG, WebP, BMP and GIF (first frame); grayscale, palette, RGBA (over white),
            CMYK and EXIF-rotated photos are converted to upright RGB.
            """,
        ),
        CatalogEntry(
            "imdb_sentiment",
            TextClassification(),
            "training.imdb_sentiment",
            "sentiment",
            """Sentiment of English movie reviews: {"texts": ["...", ...]} -> label and probability of positive, per text.""",
        ),
        CatalogEntry(
            "boston_housing",
            TabularRegression(answer_field="price", description="predicted median house price"),
            "training.boston_housing",
            "predict_price",
            """Median house price (in $1000s) per row of the 13 Boston housing features.

            A row is an object of named features {"CRIM": 0.1, ..., "LSTAT": 5.0} (names
            case-insensitive) or a list of 13 numbers in the order CRIM, ZN, INDUS, CHAS,
            NOX, RM, AGE, DIS, RAD, TAX, PTRATIO, B, LSTAT.
            """,
        ),
    )
}


def entry(name: str) -> CatalogEntry:
    try:
        return CATALOG[name]
    except KeyError:
        raise NotFoundError(f"unknown model {name!r}; the catalog has {sorted(CATALOG)}") from None

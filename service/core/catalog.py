"""The three models this project ships, as named recipes: each name's trainer and the endpoint it had first.

What is served is not decided here: the registry is the catalog. Every model directory
with a CURRENT version is served by the task its metadata names (tasks/kinds.py) at
POST /models/{name}/predict, whatever its name. This file keeps the shipped names'
history: `python -m training imdb_sentiment` still runs its own recipe, and
/classify_image, /sentiment and /predict_price still answer (BentoML APIs, fixed when
the service class is made, so they need a task and a name here). Besides the trainers,
the only place that names a model.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.core.tasks import Task
from service.core.tasks.kinds import tabular, task_for


@dataclass(frozen=True)
class Recipe:
    name: str  # the registry's model name
    task: Task  # the kind its endpoint takes (the endpoint's request and answer schema)
    trainer: str  # module with add_arguments(parser) and train(args) -> TrainingResult; imported only to train
    endpoint: str  # its own route, POST /<endpoint>, beside /models/<name>/predict
    doc: str  # the endpoint's description (OpenAPI)


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            "image_classifier",
            task_for({"preprocessing": {"kind": "image"}}),
            "training.image_classifier",
            "classify_image",
            """Classify images: label, its score and the probability of every class, per image.

            Send files as multipart/form-data, one `images` part per image
            (curl -F images=@cat.jpg -F images=@dog.png), or JSON {"images": [base64, ...]}.
            JPEG, PNG, WebP, BMP and GIF (first frame); grayscale, palette, RGBA (over white),
            CMYK and EXIF-rotated photos are converted to upright RGB.
            """,
        ),
        Recipe(
            "imdb_sentiment",
            task_for({"preprocessing": {"kind": "text"}, "labels": ["negative", "positive"]}),
            "training.imdb_sentiment",
            "sentiment",
            """Sentiment of English movie reviews: {"texts": ["...", ...]} -> label and probability of positive, per text.""",
        ),
        Recipe(
            "boston_housing",
            tabular("price", "predicted median house price"),
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


def own_endpoint(name: str) -> str | None:
    """The route a shipped model had before every model got /models/{name}/predict (None for any other model)."""
    return f"/{RECIPES[name].endpoint}" if name in RECIPES else None

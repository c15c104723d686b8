"""Tabular regression (Boston housing): a row of named numeric features in, one number out."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, Field, PlainValidator, WithJsonSchema, create_model

from service.core.config import Settings
from service.core.errors import UsageError
from service.core.preprocessing import StandardScaler, feature_row, match_names
from service.core.registry import VersionFiles
from service.core.tasks.base import Answer, BatchSizes, Gate, Task, Tensor

ROW_JSON_BYTES = 16 * 1024  # the most JSON a row may take: about 500 named features
LIGHT_REQUEST_ROWS = 64  # scaling and inference of this many rows take ~0.1 ms here: less than a thread hop
# How GET /models labels a version's feature ranges and starting row (see `describe`).
SEEN_RANGE = "min and max of the training rows"
ESTIMATED_RANGE = "mean ± 2 std of the training rows (this version recorded no min and max)"
TYPICAL_ROW = "the training mean of every feature (this version recorded no real example row)"


def _csv_number(text: Any) -> Any:
    """A CSV cell as a number; "" is a missing value; text that is no number stays text (and fails validation)."""
    if not isinstance(text, str):
        return text
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return text


class TabularRegression(Task):
    """`answer_field` names the predicted number in answers ("price"); `unit` comes from the version's metadata."""

    name = "tabular_regression"
    assets_kind = "tabular"
    request_field = "rows"
    item_noun = "row"
    gate = Gate("mae", higher_is_better=False, default_tolerance=0.1)
    predicts_value = True
    batch_input_help = "CSV, JSONL or Parquet with one column per feature (the model's names, any case);\nother columns are ignored"
    batch_sizes = BatchSizes(cpu=512, gpu=512)  # CPU saturates at 512 (benchmarks/results/batch_sizes.md); not measured on a GPU

    def __init__(self, answer_field: str, description: str) -> None:
        self.answer_field = answer_field
        fields: dict[str, Any] = {
            answer_field: (float, Field(description=description)),
            "unit": (str, Field(description="the unit of the prediction, from the model's metadata")),
            "model": (str, ...),
            "version": (int, ...),
        }
        self.answer_model: type[BaseModel] = create_model(f"{answer_field.capitalize()}Answer", **fields)

    def load_assets(self, files: VersionFiles, metadata: Mapping[str, Any]) -> StandardScaler:
        return StandardScaler.from_json(files.read_json(metadata["preprocessing"]["scaler_file"]))

    def check(self, value: Any, assets: StandardScaler, settings: Settings) -> np.ndarray:
        return assets.check(feature_row(value, assets.feature_names))

    def max_json_item_bytes(self, settings: Settings) -> int:
        return ROW_JSON_BYTES

    def is_light(self, items: Sequence[np.ndarray]) -> bool:
        return len(items) <= LIGHT_REQUEST_ROWS

    def to_tensor(self, items: Sequence[np.ndarray], assets: StandardScaler) -> np.ndarray:
        return assets.transform(np.stack(items))

    def answers(self, outputs: np.ndarray, assets: Any, metadata: Mapping[str, Any]) -> list[Answer]:
        unit = metadata["preprocessing"].get("unit", "")
        return [{self.answer_field: float(v), "unit": unit} for v in outputs.reshape(-1)]

    def smoke_items(self, assets: StandardScaler) -> list[np.ndarray]:
        """A typical row and one a little larger, through the checks every client's row gets."""
        typical = assets.inverse_example()
        return [assets.check(feature_row(row.tolist(), assets.feature_names)) for row in (typical, typical * 1.1)]

    def observation(self, answer: Answer) -> tuple[str | None, float]:
        return None, answer[self.answer_field]

    def score(self, answers: Sequence[Answer], targets: Sequence[Any]) -> float:
        return float(np.mean([abs(a[self.answer_field] - t) for a, t in zip(answers, targets, strict=True)]))

    def describe(self, assets: StandardScaler, metadata: Mapping[str, Any]) -> dict[str, Any]:
        """The features with the range the model saw (and what each means, when the version recorded it) and a row to
        start from: the version's real example row when it recorded one, else the scaler's typical row; each says which
        it is (`range_source`, `example.source`)."""
        low, high, seen = assets.ranges()
        example = metadata.get("data", {}).get("example")
        if not example:
            typical = assets.inverse_example()
            example = {"values": dict(zip(assets.feature_names, map(float, typical))), "source": TYPICAL_ROW, "real": False}
        described = metadata["preprocessing"].get("feature_descriptions")
        meanings = described if isinstance(described, Mapping) else {}
        return super().describe(assets, metadata) | {
            "answer_field": self.answer_field,
            "unit": metadata["preprocessing"].get("unit", ""),
            "features": [
                {"name": name, "min": float(lo), "max": float(hi), "log1p": name in assets.log1p}
                | ({"description": str(meanings[name])[:200]} if name in meanings else {})
                for name, lo, hi in zip(assets.feature_names, low, high)
            ],
            "range_source": SEEN_RANGE if seen else ESTIMATED_RANGE,
            "range_seen": seen,
            "example": example,
        }

    def request_item(self, settings: Settings, assets: Callable[[], StandardScaler]) -> Any:
        schema = {
            "oneOf": [
                {"type": "object", "additionalProperties": {"type": "number"}, "description": "the features by name (case-insensitive)"},
                {"type": "array", "items": {"type": "number"}, "description": "the features in the model's order (GET /models)"},
            ]
        }
        return Annotated[Any, PlainValidator(lambda value: self.check(value, assets(), settings)), WithJsonSchema(schema)]

    def smoke_request(self, items: Sequence[Any]) -> dict[str, Any]:
        return {"json": {self.request_field: [[float(v) for v in row] for row in items]}}

    def table_columns(self, columns: Sequence[str], assets: StandardScaler, requested: str | None) -> list[str]:
        if requested:
            raise UsageError(f"--text-column is for text models; {self.name} reads feature columns")
        found, missing = match_names(columns, assets.feature_names)
        if missing:
            raise UsageError(f"no column for features {missing}; columns are {list(columns)} (names are case-insensitive)")
        return [found[name] for name in assets.feature_names]

    def table_value(self, row: Mapping[str, Any], columns: Sequence[str], from_text: bool) -> dict[str, Any]:
        """The feature columns' values; a missing or empty one is left out, so validation names it missing."""
        values = {}
        for column in columns:
            value = row.get(column)
            if from_text:
                value = _csv_number(value)
            if value is not None:
                values[column] = value
        return values

    def tensor_inputs(self, assets: StandardScaler) -> list[Tensor]:
        """FP32 [N, features], the features in the model's order (GET /models)."""
        return [Tensor(self.request_field, "FP32", (-1, len(assets.feature_names)))]

    def tensor_outputs(self, metadata: Mapping[str, Any]) -> list[Tensor]:
        return [Tensor(self.answer_field, "FP32", (-1,))]

    def tensor_value(self, tensor: Tensor, element: np.ndarray, settings: Settings) -> list[float]:
        return element.tolist()  # Python floats, as JSON rows of the friendly API give `check`

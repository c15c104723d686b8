"""Tabular regression (Boston housing): a row of named numeric features in, one number out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from service.core.config import Settings
from service.core.preprocessing import StandardScaler, feature_row
from service.core.registry import VersionFiles
from service.core.tasks.base import Answer, BatchSizes, Task

ROW_JSON_BYTES = 16 * 1024  # the most JSON a row may take: about 500 named features
LIGHT_REQUEST_ROWS = 64  # scaling and inference of this many rows take ~0.1 ms here: less than a thread hop


class TabularRegression(Task):
    """`answer_field` names the predicted number in answers ("price") and `description` says what it is; `unit` comes from metadata."""

    name = "tabular_regression"
    assets_kind = "tabular"
    item_noun = "row"
    predicts_value = True
    batch_sizes = BatchSizes(cpu=512, gpu=512)  # CPU saturates at 512 (benchmarks/results/batch_sizes.md); not measured on a GPU

    def __init__(self, answer_field: str, description: str) -> None:
        self.answer_field = answer_field
        self.description = description

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

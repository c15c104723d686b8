"""Tabular regression: a row of named features in (numbers, or categories seen in training), one number out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from service.core.config import Settings
from service.core.preprocessing import TableEncoder
from service.core.registry import VersionFiles
from service.core.tasks.base import Answer, BatchSizes, Task

ROW_JSON_BYTES = 16 * 1024  # the most JSON a row may take: about 500 named features
LIGHT_REQUEST_ROWS = 64  # scaling and inference of this many rows take ~0.1 ms here: less than a thread hop


class TabularRegression(Task):
    """`answer_field` names the predicted number in answers (the target's name) and `description` says what it is; `unit` comes from metadata."""

    name = "tabular_regression"
    assets_kind = "tabular"
    item_noun = "row"
    predicts_value = True
    batch_sizes = BatchSizes(cpu=512, gpu=512)  # CPU saturates at 512 (benchmarks/results/batch_sizes.md); not measured on a GPU

    def __init__(self, answer_field: str, description: str) -> None:
        self.answer_field = answer_field
        self.description = description

    def load_assets(self, files: VersionFiles, metadata: Mapping[str, Any]) -> TableEncoder:
        return TableEncoder.from_json(files.read_json(metadata["preprocessing"]["scaler_file"]))

    def check(self, value: Any, assets: TableEncoder, settings: Settings) -> np.ndarray:
        return assets.check(value)

    def max_json_item_bytes(self, settings: Settings) -> int:
        return ROW_JSON_BYTES

    def is_light(self, items: Sequence[np.ndarray]) -> bool:
        return len(items) <= LIGHT_REQUEST_ROWS

    def to_tensor(self, items: Sequence[np.ndarray], assets: TableEncoder) -> np.ndarray:
        return assets.transform(np.stack(items))

    def answers(self, outputs: np.ndarray, assets: Any, metadata: Mapping[str, Any]) -> list[Answer]:
        unit = metadata["preprocessing"].get("unit", "")
        return [{self.answer_field: float(v), "unit": unit} for v in outputs.reshape(-1)]

    def smoke_items(self, assets: TableEncoder) -> list[np.ndarray]:
        """A typical row and one a little larger, through the checks every client's row gets."""
        typical = assets.inverse_example()
        rows = [
            {
                name: assets.categories[name][int(v)] if name in assets.categories else float(v) * scale
                for name, v in zip(assets.feature_names, typical)
            }
            for scale in (1.0, 1.1)
        ]
        return [assets.check(row) for row in rows]

    def observation(self, answer: Answer) -> tuple[str | None, float]:
        return None, answer[self.answer_field]

    def score(self, answers: Sequence[Answer], targets: Sequence[Any]) -> float:
        return float(np.mean([abs(a[self.answer_field] - t) for a, t in zip(answers, targets, strict=True)]))

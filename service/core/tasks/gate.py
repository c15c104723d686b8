"""Redeploy's side of each kind: the metric that decides whether a retrained version may replace the served one.

The task scores answers against the truth (`Task.score`); the gate says what that
number is called, which way is better and how much worse a new version may be by
default (training/redeploy.py, `--tolerance`).
"""

from __future__ import annotations

from dataclasses import dataclass

from service.core.tasks.base import ClassificationTask, Task, for_kind
from service.core.tasks.tabular_regression import TabularRegression


@dataclass(frozen=True)
class Gate:
    """The gate metric's name, direction and default tolerance."""

    metric: str
    higher_is_better: bool
    default_tolerance: float

    def passes(self, new: float, current: float, tolerance: float) -> bool:
        return new >= current - tolerance if self.higher_is_better else new <= current + tolerance

    def relation(self, tolerance: float) -> str:
        return f"may be at most {tolerance} {'lower' if self.higher_is_better else 'higher'}"


GATES: dict[type[Task], Gate] = {
    ClassificationTask: Gate("accuracy", higher_is_better=True, default_tolerance=0.01),
    TabularRegression: Gate("mae", higher_is_better=False, default_tolerance=0.1),
}


def redeploy_gate(task: Task) -> Gate:
    """The gate for `task`'s kind (every classifier shares one)."""
    return for_kind(task, GATES)

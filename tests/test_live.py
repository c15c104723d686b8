"""Redeploy's live watch, in-process: what it counts from /metrics, across a reset of the service's counters."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from training import live

pytestmark = pytest.mark.unit

NAME = "boston_housing"


def exposition(ok: dict[int, int], answered: int) -> str:
    """A /metrics text with `ok` requests per version (each in the 10 ms bucket) and BentoML's answered count."""
    lines = [
        "# TYPE bentoml_service_request counter",
        f'bentoml_service_request_total{{endpoint="/predict_price",http_response_code="200"}} {answered}',
        "# TYPE modelserve_requests counter",
    ]
    lines += [f'modelserve_requests_total{{model="{NAME}",version="{v}",outcome="ok"}} {n}' for v, n in ok.items()]
    lines.append("# TYPE modelserve_compute_seconds histogram")
    for v, n in ok.items():
        lines += [
            f'modelserve_compute_seconds_bucket{{model="{NAME}",version="{v}",le="0.01"}} {n}',
            f'modelserve_compute_seconds_bucket{{model="{NAME}",version="{v}",le="+Inf"}} {n}',
        ]
    return "\n".join(lines) + "\n"


def args(**overrides: object) -> argparse.Namespace:
    defaults = {"canary": 50.0, "shadow": False, "watch": 0.05, "min_requests": 100, "max_error_rate_increase": 0.01}
    return argparse.Namespace(**(defaults | {"max_p99_increase": 0.5, "max_disagreement": 0.05, "max_difference": 1.0} | overrides))


def reads(*texts: str) -> Iterator[str]:
    yield from texts
    while True:
        yield texts[-1]


def test_a_reset_of_the_counters_is_said_and_what_was_counted_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counters went back to zero mid-watch (the service's metrics directory emptied): 80 + 60 candidate requests, not 0."""
    monkeypatch.setattr(live, "POLL_S", 0.01)
    said: list[str] = []
    texts = reads(
        exposition({1: 1000, 2: 0}, 1100),  # the watch starts
        exposition({1: 1080, 2: 80}, 1300),
        exposition({}, 3),  # another server emptied the directory: every series gone
        exposition({1: 60, 2: 60}, 130),
    )
    verdict = live.watch(args(watch=0.1), lambda: next(texts), NAME, 1, 2, False, said.append)
    assert verdict.decided and verdict.promote, verdict.reasons
    assert "candidate 140 requests" in verdict.reasons[0]
    assert verdict.resets == 1 and any("metrics were reset" in line for line in said)


def test_counters_that_only_grow_are_no_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "POLL_S", 0.01)
    said: list[str] = []
    texts = reads(exposition({1: 10, 2: 0}, 20), exposition({1: 30, 2: 20}, 60))
    verdict = live.watch(args(), lambda: next(texts), NAME, 1, 2, False, said.append)
    assert not verdict.decided and verdict.resets == 0 and not any("reset" in line for line in said)
    assert "candidate 20 requests" in verdict.reasons[0]

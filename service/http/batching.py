"""Bound how long BentoML's adaptive batcher may hold a request to build a batch.

BentoML 1.4's CorkDispatcher holds a lone request until it has waited about as long
as the average wait it has observed, and then records that hold as an observed wait.
After one burst of load the average stays high for good: measured here, a one-item
request to the text endpoint took 5.6 ms on a fresh server and 40 ms after a 10 s burst of 32
clients, still 40 ms minutes later. Triton's dynamic batcher has an explicit
max_queue_delay; this gives BentoML's batcher one by clamping its learned wait.
Batches still form under load: only one batch per endpoint runs at a time, and the
queue fills while it runs.
"""

from __future__ import annotations

from typing import Any

_PATCHED_FLAG = "_modelserve_max_delay_s"


def bound_queue_delay(max_delay_s: float) -> None:
    """Clamp every dispatcher optimizer's `wait` to `max_delay_s` (idempotent; the last bound wins)."""
    from bentoml._internal.marshal import dispatcher

    optimizer = dispatcher.Optimizer
    original = getattr(optimizer.trigger_refresh, "__wrapped__", optimizer.trigger_refresh)

    def trigger_refresh(self: Any) -> None:
        original(self)
        self.wait = min(self.wait, max_delay_s)

    trigger_refresh.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(trigger_refresh, _PATCHED_FLAG, max_delay_s)
    optimizer.trigger_refresh = trigger_refresh

"""Cancel BentoML's per-request timeout timer when the request ends.

BentoML 1.4's TimeoutMiddleware arms `loop.call_later(timeout, ...)` for every request
and never cancels it. Each live timer keeps the request's contextvars alive (its
OpenTelemetry span among them) for the whole timeout (120 s here): 5,400 finished
requests after 8 s of load, measured, and rate x 120 s at steady state. Python's full
garbage collections walk them all: under 32 clients the tracked objects grew from
130,000 to 260,000 in 10 s and each full collection paused the worker for 100-260 ms,
which put every in-flight request into the p99 (p50 40 ms, p99 580 ms on the text endpoint).
Same behaviour, same 504 on timeout, but the timer goes when the request does.

BentoML's middleware also waits for the first response message until the timeout, even
when the app has already ended without sending one: a client that goes away mid-body (the
guard then answers nothing) left its request waiting 120 s, and a SIGTERM'd worker waited
for it: one `Transfer-Encoding: gzip` request made the test server's shutdown take 30+ s
(killed then). Here the wait also ends when the app does.

The replacement is a copy of BentoML 1.4.39's method plus these two changes, so `check`
compares a digest of BentoML's source with the one it was copied from: any change
upstream must be read before the copy runs in its place. No public setting helps:
BentoML always adds the middleware (`traffic.timeout` must be a positive number, and
a larger one only keeps each timer, and what it holds, alive longer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from service.patches import Pin, check_signature, mark_active, source_digest

PIN = Pin(
    module=__name__,
    distribution="bentoml",
    version="1.4.39",
    target="bentoml._internal.server.http.traffic.TimeoutMiddleware.__call__",
    purpose="end the per-request timeout timer, and the wait for an answer, when the request ends",
)
# sha256 of BentoML 1.4.39's TimeoutMiddleware.__call__ source (service.patches.source_digest), which the copy below follows.
UPSTREAM_CALL_DIGEST = "fd8b9e3da28ed2b4"
_PATCHED_FLAG = "_modelserve_cancels_timer"


def check() -> None:
    """PatchMismatch unless BentoML is the pinned version and TimeoutMiddleware is the one the replacement copies."""
    PIN.check_version()
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    check_signature(PIN, TimeoutMiddleware.__init__, ["self", "app", "timeout"])
    check_signature(PIN, TimeoutMiddleware._set_timer_out, ["self", "waiter"])
    upstream = _upstream_call(TimeoutMiddleware)
    check_signature(PIN, upstream, ["self", "scope", "receive", "send"])
    if source_digest(upstream) != UPSTREAM_CALL_DIGEST:
        raise PIN.mismatch(f"TimeoutMiddleware.__call__ changed (source digest {source_digest(upstream)}, not {UPSTREAM_CALL_DIGEST})")


def _upstream_call(middleware: type) -> Callable[..., Any]:
    """BentoML's own __call__, also once this module has replaced it."""
    call = middleware.__call__  # type: ignore[operator]
    return getattr(call, "__wrapped__", call)


def cancel_finished_request_timers() -> None:
    """Replace TimeoutMiddleware.__call__ with one that cancels its timer (idempotent)."""
    check()
    from bentoml._internal.server.http.traffic import TimeoutMiddleware
    from starlette.responses import JSONResponse

    from service.http.headers import SECURITY_HEADERS

    mark_active(PIN)
    if getattr(TimeoutMiddleware.__call__, _PATCHED_FLAG, False):
        return

    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message: Any) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, _send))
        task.add_done_callback(lambda _: waiter.done() or waiter.set_result(None))  # ended without answering: stop waiting
        try:
            await waiter
        except TimeoutError:
            if task.cancel():
                message = {"error": f"Not able to process the request in {self.timeout} seconds"}
                await JSONResponse(message, status_code=504, headers=SECURITY_HEADERS)(scope, receive, send)
        else:
            await task
        finally:
            timer.cancel()

    setattr(__call__, _PATCHED_FLAG, True)
    __call__.__wrapped__ = TimeoutMiddleware.__call__  # type: ignore[attr-defined]  # BentoML's, for `check`
    TimeoutMiddleware.__call__ = __call__  # type: ignore[method-assign]

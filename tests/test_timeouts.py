"""BentoML's TimeoutMiddleware, as patched by service.timeouts: timers go when requests end, timeouts still answer 504."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from bentoml._internal.server.http.traffic import TimeoutMiddleware

from service.http.timeouts import cancel_finished_request_timers

pytestmark = pytest.mark.unit


async def _call(app: Any) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": "POST", "path": "/x", "headers": []}, receive, send)
    return sent


def _app(delay_s: float) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(delay_s)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def _live_timers(loop: asyncio.AbstractEventLoop) -> int:
    return sum(not handle.cancelled() for handle in loop._scheduled)  # type: ignore[attr-defined]


def test_finished_requests_leave_no_timer_behind() -> None:
    cancel_finished_request_timers()
    cancel_finished_request_timers()  # idempotent
    middleware = TimeoutMiddleware(_app(0), timeout=120)

    async def main() -> int:
        for messages in await asyncio.gather(*(_call(middleware) for _ in range(200))):
            assert messages[0]["status"] == 200
        return _live_timers(asyncio.get_running_loop())

    assert asyncio.run(main()) == 0


def test_a_slow_request_still_times_out_with_504() -> None:
    cancel_finished_request_timers()
    middleware = TimeoutMiddleware(_app(5), timeout=0.05)
    messages = asyncio.run(_call(middleware))
    assert messages[0]["status"] == 504
    assert b"0.05 seconds" in messages[1]["body"]

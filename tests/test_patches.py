"""The patches of third-party internals (service/patches): each matches the installed library, and each still does its job.

A test per patch runs its `check`: it fails, with the patch's own message, when the
installed uvicorn or BentoML is not the pinned version or the patched attribute
changed shape. Then the checks are shown to catch such a change, and the two patches
that change behaviour are exercised in this process.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import re
import socket
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import service.patches
from service.patches import (
    PatchMismatch,
    bentoml_cpu_count,
    bentoml_error_log,
    bentoml_metrics_dir,
    bentoml_request_timer,
    circus_drain,
    uvicorn_drain,
    uvicorn_header_timeout,
    uvicorn_keep_alive,
)

pytestmark = pytest.mark.unit

PATCHES = [
    uvicorn_header_timeout,
    uvicorn_keep_alive,
    uvicorn_drain,
    circus_drain,
    bentoml_request_timer,
    bentoml_cpu_count,
    bentoml_error_log,
    bentoml_metrics_dir,
]


def test_every_patch_module_is_checked_here() -> None:
    on_disk = sorted(f"service.patches.{p.stem}" for p in Path(service.patches.__path__[0]).glob("*.py") if p.stem != "__init__")
    assert on_disk == sorted(p.__name__ for p in PATCHES), "a new module in service/patches needs its checks here"


@pytest.mark.parametrize("patch", PATCHES, ids=lambda p: p.__name__.rsplit(".", 1)[-1])
def test_patch_matches_the_installed_library(patch: ModuleType) -> None:
    patch.check()  # PatchMismatch says which version or attribute differs, and what to do


@pytest.mark.parametrize("patch", PATCHES, ids=lambda p: p.__name__.rsplit(".", 1)[-1])
def test_a_different_version_is_refused_with_what_to_do(patch: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    pinned = patch.PIN.distribution
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "99.0" if name == pinned else real_version(name))
    with pytest.raises(PatchMismatch, match=rf"written for {pinned} {patch.PIN.version}.*{pinned} 99.0 is installed.*pyproject.toml"):
        patch.check()


def test_a_changed_signature_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    def on_headers_complete(self: Any, extra: Any) -> None:
        pass

    monkeypatch.setattr(HttpToolsProtocol, "on_headers_complete", on_headers_complete)
    with pytest.raises(PatchMismatch, match=r"on_headers_complete takes \(self, extra\), the patch expects \(self\)"):
        uvicorn_header_timeout.check()


def test_a_changed_timeout_middleware_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)  # an upstream rewrite with the same signature

    monkeypatch.setattr(TimeoutMiddleware, "__call__", __call__)
    with pytest.raises(PatchMismatch, match=re.escape("TimeoutMiddleware.__call__ changed")):
        bentoml_request_timer.check()


def test_a_changed_keep_alive_handler_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from uvicorn.protocols.http.h11_impl import H11Protocol

    def timeout_keep_alive_handler(self: Any) -> None:
        self.transport.abort()  # an upstream rewrite that no longer closes the way the patch expects

    monkeypatch.setattr(H11Protocol, "timeout_keep_alive_handler", timeout_keep_alive_handler)
    with pytest.raises(PatchMismatch, match=re.escape("timeout_keep_alive_handler no longer contains ['self.transport.close()']")):
        uvicorn_keep_alive.check()


def test_a_renamed_error_logger_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from bentoml._internal.server import http_app

    monkeypatch.setattr(http_app, "logger", logging.getLogger("bentoml.elsewhere"))
    with pytest.raises(PatchMismatch, match=re.escape("its logger is named 'bentoml.elsewhere'")):
        bentoml_error_log.check()


def test_applied_patches_are_listed_for_the_start_up_log() -> None:
    bentoml_request_timer.cancel_finished_request_timers()
    uvicorn_header_timeout.limit_header_time(10)
    uvicorn_drain.drain_on_sigterm()
    uvicorn_keep_alive.keep_alive_while_a_request_waits()
    listed = "; ".join(service.patches.active())
    assert "bentoml_request_timer (bentoml 1.4.39)" in listed
    assert "uvicorn_header_timeout (uvicorn 0.54.0: headers within 10 s and 65,536 bytes)" in listed
    assert "uvicorn_drain (uvicorn 0.54.0)" in listed and "uvicorn_keep_alive (uvicorn 0.54.0)" in listed
    for patch in (uvicorn_header_timeout, bentoml_request_timer, uvicorn_drain, uvicorn_keep_alive):
        patch.check()  # still true once patched: the checks read through the wrappers


# ---------------------------------------------------------------- the request timer patch at work


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
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    bentoml_request_timer.cancel_finished_request_timers()
    bentoml_request_timer.cancel_finished_request_timers()  # idempotent
    middleware = TimeoutMiddleware(_app(0), timeout=120)

    async def main() -> int:
        for messages in await asyncio.gather(*(_call(middleware) for _ in range(200))):
            assert messages[0]["status"] == 200
        return _live_timers(asyncio.get_running_loop())

    assert asyncio.run(main()) == 0


def test_a_request_whose_client_went_away_ends_at_once() -> None:
    """An app that ends without answering (the guard, when the client disconnects mid-body) must not hold the request.

    BentoML's middleware waited for a response until the timeout (120 s here): the task stayed,
    and a SIGTERM'd worker waited for it (a `Transfer-Encoding: gzip` request made shutdown take 30+ s).
    """
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    async def gone(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # the disconnect; nothing is sent

    bentoml_request_timer.cancel_finished_request_timers()
    middleware = TimeoutMiddleware(gone, timeout=120)

    async def main() -> tuple[list[dict[str, Any]], int]:
        sent = await asyncio.wait_for(_call(middleware), timeout=5)
        return sent, _live_timers(asyncio.get_running_loop())

    sent, timers = asyncio.run(main())
    assert sent == [] and timers == 0


def test_a_slow_request_still_times_out_with_504() -> None:
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    bentoml_request_timer.cancel_finished_request_timers()
    middleware = TimeoutMiddleware(_app(5), timeout=0.05)
    messages = asyncio.run(_call(middleware))
    assert messages[0]["status"] == 504
    assert b"0.05 seconds" in messages[1]["body"]
    headers = dict(messages[0]["headers"])
    assert headers[b"x-content-type-options"] == b"nosniff" and b"default-src 'self'" in headers[b"content-security-policy"]


# ---------------------------------------------------------------- the header timeout patch at work


class Transport(asyncio.Transport):
    """What uvicorn's protocols write to and close: an in-memory transport (no socket, no server)."""

    def __init__(self) -> None:
        super().__init__()
        self.written, self.closed = b"", False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 3000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _connection(protocol_name: str, data: bytes, wait_s: float, transport: Transport | None = None, keep_alive_s: float = 5) -> Transport:
    """A connection to uvicorn's `protocol_name` ("h11" or "httptools") that receives `data`, then waits `wait_s`."""
    import uvicorn
    from uvicorn.server import ServerState

    config = uvicorn.Config(_ok, http=protocol_name, lifespan="off", log_config=None, timeout_keep_alive=keep_alive_s)
    config.load()
    transport = transport or Transport()

    async def main() -> Transport:
        protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop())
        protocol.connection_made(transport)
        if data:
            protocol.data_received(data)
        await asyncio.sleep(wait_s)
        return transport

    return asyncio.run(main())


@pytest.mark.parametrize("protocol", ["httptools", "h11"])
def test_headers_that_do_not_arrive_in_time_get_408_and_close(protocol: str) -> None:
    uvicorn_header_timeout.limit_header_time(0.05)
    try:
        transport = _connection(protocol, b"GET /readyz HTTP/1.1\r\nHost: x\r\nX-Slow: aaa", wait_s=0.3)
    finally:
        uvicorn_header_timeout.limit_header_time(10)
    assert transport.written.startswith(b"HTTP/1.1 408 Request Timeout") and b"MODELSERVE_HEADER_TIMEOUT_S" in transport.written
    assert transport.closed


@pytest.mark.parametrize("protocol", ["httptools", "h11"])
def test_a_silent_connection_is_closed_without_an_answer(protocol: str) -> None:
    uvicorn_header_timeout.limit_header_time(0.05)
    try:
        transport = _connection(protocol, b"", wait_s=0.3)
    finally:
        uvicorn_header_timeout.limit_header_time(10)
    assert transport.written == b"" and transport.closed


@pytest.mark.parametrize("protocol", ["httptools", "h11"])
def test_complete_headers_disarm_the_timer(protocol: str) -> None:
    uvicorn_header_timeout.limit_header_time(0.05)
    try:
        transport = _connection(protocol, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n", wait_s=0.3)
    finally:
        uvicorn_header_timeout.limit_header_time(10)
    assert transport.written.startswith(b"HTTP/1.1 200") and b"408" not in transport.written
    assert not transport.closed, "a kept-alive connection stays open after its answer"


@pytest.mark.parametrize("protocol", ["httptools", "h11"])
def test_headers_over_the_size_limit_get_431_and_close(protocol: str) -> None:
    uvicorn_header_timeout.limit_header_time(10, max_header_bytes=1024)
    try:
        transport = _connection(protocol, b"GET /readyz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000, wait_s=0.05)
    finally:
        uvicorn_header_timeout.limit_header_time(10)
    assert (
        transport.written.startswith(b"HTTP/1.1 431 Request Header Fields Too Large")
        and b"MODELSERVE_MAX_HEADER_BYTES" in transport.written
    )
    assert b"x-content-type-options: nosniff" in transport.written.lower() and transport.closed


# ---------------------------------------------------------------- the keep-alive patch and the drain at work


class SocketTransport(Transport):
    """An in-memory transport whose `socket` is one end of a socket pair: what the client sent but nobody read waits there."""

    def __init__(self) -> None:
        super().__init__()
        self.sock, self.client = socket.socketpair()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else super().get_extra_info(name, default)

    def send_unread(self, data: bytes) -> None:
        """The client's next request arrives in the socket; the event loop has not read it yet."""
        self.client.sendall(data)

    def close(self) -> None:
        super().close()
        self.sock.close()
        self.client.close()


REQUEST = b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"


def test_bytes_waiting_counts_what_the_socket_holds_unread() -> None:
    transport = SocketTransport()
    assert uvicorn_keep_alive.bytes_waiting(transport) == 0
    transport.send_unread(REQUEST)
    assert uvicorn_keep_alive.bytes_waiting(transport) == len(REQUEST)
    transport.close()
    assert uvicorn_keep_alive.bytes_waiting(transport) == 0, "a closed socket has nothing to read"
    assert uvicorn_keep_alive.bytes_waiting(Transport()) == 0, "no socket: nothing waits"


@pytest.mark.parametrize("protocol", ["httptools", "h11"])
def test_the_keep_alive_timer_closes_an_idle_connection(protocol: str) -> None:
    uvicorn_keep_alive.keep_alive_while_a_request_waits()
    transport = _connection(protocol, REQUEST, wait_s=0.5, transport=SocketTransport(), keep_alive_s=0.1)
    assert transport.written.startswith(b"HTTP/1.1 200") and transport.closed


@pytest.mark.parametrize("protocol", ["httptools", "h11"])
def test_the_keep_alive_timer_leaves_open_a_connection_whose_next_request_waits_unread(protocol: str) -> None:
    """The timer is due while the next request sits in the socket (the loop was busy): uvicorn closed it; the patch waits for the read."""
    uvicorn_keep_alive.keep_alive_while_a_request_waits()
    transport = SocketTransport()
    transport.send_unread(REQUEST)
    _connection(protocol, REQUEST, wait_s=0.5, transport=transport, keep_alive_s=0.1)  # the timer is due 4-5 times
    assert transport.written.startswith(b"HTTP/1.1 200") and not transport.closed
    transport.close()


@pytest.mark.parametrize("protocol", ["httptools", "h11"])
def test_a_drain_closes_an_idle_connection_but_answers_a_request_waiting_in_its_socket(protocol: str) -> None:
    import uvicorn
    from uvicorn.server import ServerState

    uvicorn_drain.drain_on_sigterm()
    config = uvicorn.Config(_ok, http=protocol, lifespan="off", log_config=None)
    config.load()

    async def main(waiting: bytes) -> tuple[SocketTransport, bytes]:
        protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop())
        transport = SocketTransport()
        protocol.connection_made(transport)
        protocol.data_received(REQUEST)
        await asyncio.sleep(0.1)  # answered: the connection is idle between requests
        answered, transport.written = transport.written, b""
        transport.send_unread(waiting)
        protocol.shutdown()  # SIGTERM
        if waiting and not transport.closed:
            protocol.data_received(transport.sock.recv(65536))  # the loop reads what waited
            await asyncio.sleep(0.1)
        assert answered.startswith(b"HTTP/1.1 200")
        return transport, transport.written

    idle, written = asyncio.run(main(b""))
    assert idle.closed and written == b"", "nothing begun: closed at once"
    busy, written = asyncio.run(main(REQUEST))
    assert written.startswith(b"HTTP/1.1 200") and busy.closed, "the waiting request is answered, then the connection closes"

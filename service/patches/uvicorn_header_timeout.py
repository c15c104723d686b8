"""A time and a size limit on a request's line and headers, which uvicorn does not have (a patch of uvicorn's HTTP protocols).

uvicorn 0.54 arms no timer while it reads a request's headers: only its keep-alive
timer, and only between requests. A client that opens a connection and sends
nothing, or sends its headers a byte a second, holds the connection (and a file
descriptor) for as long as it likes: measured, a socket sending one header byte a
second was still open after minutes. No uvicorn or BentoML setting bounds this
(uvicorn's `timeout_keep_alive` is the idle time *after* a response; BentoML's
request timeout starts once the headers are in). Like nginx's client_header_timeout
and Apache's RequestReadTimeout, the headers must be complete within
MODELSERVE_HEADER_TIMEOUT_S of the connection opening, or of the first byte of the
next request on a kept-alive connection: otherwise 408 and the connection is closed
(closed without an answer when the client sent nothing at all). The body's own
limit is in the request guard (service/http/guard.py), where the ASGI app reads it.

Size: httptools buffers a header of any length (a 30 MB header was taken; 32 of them
at once grew a worker by 535 MB). The bytes of a request's line and headers are counted
as they arrive; past MODELSERVE_MAX_HEADER_BYTES the answer is 431 and the connection
is closed, before the parser sees them (h11's own bound is set to the same).

Pinned: uvicorn 0.54.0, checked at start-up (`check`). Both of its HTTP protocols are
patched: httptools (the C parser uvicorn picks when it is installed, as the serving
extras do: measurably faster per request) and h11 (the pure-Python fallback).
uvicorn 0.54's `h11_max_incomplete_event_size` bounds h11's headers only (16 KiB, then
400), not their time; no uvicorn or BentoML option arms a timer before the headers are in.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from service.http.headers import raw_security_headers
from service.patches import Pin, check_signature, check_source, mark_active

PIN = Pin(
    module=__name__,
    distribution="uvicorn",
    version="0.54.0",
    target="uvicorn.protocols.http.{h11_impl.H11Protocol,httptools_impl.HttpToolsProtocol}",
    purpose="a time and a size limit on a request's line and headers (MODELSERVE_HEADER_TIMEOUT_S, MODELSERVE_MAX_HEADER_BYTES)",
)
_PATCHED_FLAG = "_modelserve_header_timeout_s"
_MAX_HEADER_FLAG = "_modelserve_max_header_bytes"
log = logging.getLogger("modelserve.connections")


def check() -> None:
    """PatchMismatch unless uvicorn is the pinned version and its protocols have the methods and state the patch wraps and reads."""
    PIN.check_version()
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    for protocol in (H11Protocol, HttpToolsProtocol):
        check_signature(PIN, _original(protocol, "connection_made"), ["self", "transport"])
        check_signature(PIN, _original(protocol, "data_received"), ["self", "data"])
        check_signature(PIN, _original(protocol, "connection_lost"), ["self", "exc"])
        check_source(PIN, _original(protocol, "__init__"), "self.loop =", "self.transport")
        check_source(PIN, _original(protocol, "connection_made"), "self.transport = transport", "self.client =")
    check_source(PIN, _original(H11Protocol, "__init__"), "self.conn = h11.Connection(")
    if not isinstance(getattr(h11, "IDLE", None), type):
        raise PIN.mismatch("h11.IDLE, the client state while a request's headers are pending, is gone")
    check_signature(PIN, _original(HttpToolsProtocol, "on_message_begin"), ["self"])
    check_signature(PIN, _original(HttpToolsProtocol, "on_headers_complete"), ["self"])


def _original(protocol: type, name: str) -> Callable[..., Any]:
    """A protocol method as uvicorn wrote it, also once this module has wrapped it."""
    method = getattr(protocol, name)
    return getattr(method, "__wrapped__", method)


def _timeout_response(timeout_s: float) -> bytes:
    return _answer("408 Request Timeout", f"the request headers did not arrive within {timeout_s:g} s (MODELSERVE_HEADER_TIMEOUT_S)")


def _answer(status: str, message: str) -> bytes:
    """A JSON error written to the socket directly, with the security headers every response of ours has; the connection closes."""
    body = json.dumps({"error": message}).encode()
    head = f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n"
    return (head + raw_security_headers() + "\r\n").encode() + body


def _over_header_limit(protocol: Any, data: bytes) -> bool:
    """Count a request's line and header bytes in `data` (up to the blank line that ends them); answer 431 and close past the limit."""
    limit = getattr(type(protocol), _MAX_HEADER_FLAG)
    seen = getattr(protocol, "_modelserve_header_bytes", 0)
    tail = getattr(protocol, "_modelserve_header_tail", b"")
    end = (tail + data).find(b"\r\n\r\n")  # the blank line may straddle two reads
    seen += len(data) if end < 0 else max(0, end + 4 - len(tail))
    protocol._modelserve_header_bytes, protocol._modelserve_header_tail = seen, (tail + data)[-3:]
    if seen <= limit:
        return False
    log.info("%s: request line and headers over %d bytes; answered 431 and closed", _peer(protocol), limit)
    message = f"the request line and headers are over {limit:,} bytes (MODELSERVE_MAX_HEADER_BYTES)"
    protocol.transport.write(_answer("431 Request Header Fields Too Large", message))
    protocol.transport.close()
    return True


def _headers_done(protocol: Any) -> None:
    """The next request's headers are counted from zero."""
    protocol._modelserve_header_bytes, protocol._modelserve_header_tail = 0, b""


def limit_header_time(timeout_s: float, max_header_bytes: int = 64 * 1024) -> None:
    """Patch uvicorn's HTTP protocols so that slow, missing or too large headers close the connection (idempotent; the last limits win)."""
    check()
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    for protocol in (H11Protocol, HttpToolsProtocol):
        already = getattr(protocol, _PATCHED_FLAG, None) is not None
        setattr(protocol, _PATCHED_FLAG, float(timeout_s))
        setattr(protocol, _MAX_HEADER_FLAG, int(max_header_bytes))
        if not already:
            _patch_h11(protocol) if protocol is H11Protocol else _patch_httptools(protocol)
    mark_active(PIN, f"headers within {timeout_s:g} s and {max_header_bytes:,} bytes")


def _arm(protocol: Any, waiting_for_headers: Callable[[Any], bool]) -> None:
    limit = getattr(type(protocol), _PATCHED_FLAG)
    protocol._modelserve_header_timer = protocol.loop.call_later(limit, _expire, protocol, limit, waiting_for_headers)


def _disarm(protocol: Any) -> None:
    timer = getattr(protocol, "_modelserve_header_timer", None)
    if timer is not None:
        timer.cancel()
        protocol._modelserve_header_timer = None


def _expire(protocol: Any, limit: float, waiting_for_headers: Callable[[Any], bool]) -> None:
    protocol._modelserve_header_timer = None
    if protocol.transport.is_closing() or not waiting_for_headers(protocol):
        return
    if getattr(protocol, "_modelserve_bytes_seen", False):
        log.info("%s: request headers not complete after %g s; answered 408 and closed", _peer(protocol), limit)
        protocol.transport.write(_timeout_response(limit))
    protocol.transport.close()


def _patch_h11(protocol: Any) -> None:
    """h11: the headers are pending while the connection's client state is IDLE."""
    import h11

    original_made, original_received, original_lost = protocol.connection_made, protocol.data_received, protocol.connection_lost

    def pending(self: Any) -> bool:
        return self.conn.their_state is h11.IDLE

    def connection_made(self: Any, transport: Any) -> None:
        original_made(self, transport)
        self._modelserve_bytes_seen = False
        self.conn._max_incomplete_event_size = getattr(type(self), _MAX_HEADER_FLAG)  # h11's own bound (16 KiB, then 400): ours
        _arm(self, pending)

    def data_received(self: Any, data: bytes) -> None:
        if getattr(self, "_modelserve_header_timer", None) is None and pending(self):
            _arm(self, pending)  # the first byte of the next request on a kept-alive connection
        self._modelserve_bytes_seen = True
        if pending(self) and _over_header_limit(self, data):
            return
        original_received(self, data)
        if not pending(self):
            _disarm(self)  # headers complete: the body's limit is the request guard's
            _headers_done(self)

    def connection_lost(self: Any, exc: Exception | None) -> None:
        _disarm(self)
        original_lost(self, exc)

    _replace(protocol, connection_made=connection_made, data_received=data_received, connection_lost=connection_lost)


def _patch_httptools(protocol: Any) -> None:
    """httptools: the headers are pending from the connection (or a request's first byte) until on_headers_complete."""
    original_made, original_begin, original_complete, original_lost, original_received = (
        protocol.connection_made,
        protocol.on_message_begin,
        protocol.on_headers_complete,
        protocol.connection_lost,
        protocol.data_received,
    )

    def pending(self: Any) -> bool:
        return getattr(self, "_modelserve_in_headers", False)

    def connection_made(self: Any, transport: Any) -> None:
        original_made(self, transport)
        self._modelserve_bytes_seen, self._modelserve_in_headers = False, True
        _arm(self, pending)

    def data_received(self: Any, data: bytes) -> None:
        self._modelserve_bytes_seen = True
        if pending(self) and _over_header_limit(self, data):
            return
        original_received(self, data)

    def on_message_begin(self: Any) -> None:
        original_begin(self)
        self._modelserve_in_headers = True
        if getattr(self, "_modelserve_header_timer", None) is None:
            _arm(self, pending)  # the first byte of the next request on a kept-alive connection

    def on_headers_complete(self: Any) -> None:
        self._modelserve_in_headers = False
        _disarm(self)  # headers complete: the body's limit is the request guard's
        _headers_done(self)
        original_complete(self)

    def connection_lost(self: Any, exc: Exception | None) -> None:
        _disarm(self)
        original_lost(self, exc)

    _replace(
        protocol,
        connection_made=connection_made,
        data_received=data_received,
        connection_lost=connection_lost,
        on_message_begin=on_message_begin,
        on_headers_complete=on_headers_complete,
    )


def _replace(protocol: type, **methods: Callable[..., Any]) -> None:
    """Put the wrappers in place, each keeping uvicorn's method as `__wrapped__` (for `check` and `_original`)."""
    for name, method in methods.items():
        method.__wrapped__ = getattr(protocol, name)  # type: ignore[attr-defined]
        setattr(protocol, name, method)


def _peer(protocol: Any) -> str:
    client = getattr(protocol, "client", None)
    return f"{client[0]}:{client[1]}" if client else "a client"

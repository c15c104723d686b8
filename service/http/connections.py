"""A time limit on a request's line and headers, which uvicorn does not have (a patch of uvicorn's h11 protocol).

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

Pinned: uvicorn 0.54.0 with its h11 protocol, asserted at start-up. uvicorn picks
httptools when it is installed; the "auto" protocol is pointed at h11 so that the
patched class is the one that serves.
"""

from __future__ import annotations

import json
import logging
from typing import Any

UVICORN_VERSION = "0.54.0"  # the version whose H11Protocol this patch was written against (pyproject pins it)
H11_PROTOCOL = "uvicorn.protocols.http.h11_impl:H11Protocol"
_PATCHED_FLAG = "_modelserve_header_timeout_s"
log = logging.getLogger("modelserve.connections")


def _timeout_response(timeout_s: float) -> bytes:
    body = json.dumps({"error": f"the request headers did not arrive within {timeout_s:g} s (MODELSERVE_HEADER_TIMEOUT_S)"}).encode()
    head = f"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    return head.encode() + body


def limit_header_time(timeout_s: float) -> None:
    """Patch uvicorn's h11 protocol so that slow or missing headers close the connection (idempotent; the last limit wins)."""
    import h11
    import uvicorn
    import uvicorn.config
    from uvicorn.protocols.http.h11_impl import H11Protocol

    if uvicorn.__version__ != UVICORN_VERSION:
        raise RuntimeError(
            f"service/http/connections.py patches uvicorn {UVICORN_VERSION}'s H11Protocol; found uvicorn {uvicorn.__version__}: "
            "check the patch against that version and update UVICORN_VERSION and the pin in pyproject.toml"
        )
    uvicorn.config.HTTP_PROTOCOLS["auto"] = H11_PROTOCOL
    already = getattr(H11Protocol, _PATCHED_FLAG, None) is not None
    setattr(H11Protocol, _PATCHED_FLAG, float(timeout_s))
    if already:
        return
    original_made, original_received, original_lost = H11Protocol.connection_made, H11Protocol.data_received, H11Protocol.connection_lost

    def arm(self: Any) -> None:
        limit = getattr(H11Protocol, _PATCHED_FLAG)
        self._modelserve_header_timer = self.loop.call_later(limit, expire, self, limit)

    def disarm(self: Any) -> None:
        timer = getattr(self, "_modelserve_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._modelserve_header_timer = None

    def expire(self: Any, limit: float) -> None:
        self._modelserve_header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if getattr(self, "_modelserve_bytes_seen", False):
            log.info("%s: request headers not complete after %g s; answered 408 and closed", _peer(self), limit)
            self.transport.write(_timeout_response(limit))
        self.transport.close()

    def connection_made(self: Any, transport: Any) -> None:
        original_made(self, transport)
        self._modelserve_bytes_seen = False
        arm(self)

    def data_received(self: Any, data: bytes) -> None:
        if getattr(self, "_modelserve_header_timer", None) is None and self.conn.their_state is h11.IDLE:
            arm(self)  # the first byte of the next request on a kept-alive connection
        self._modelserve_bytes_seen = True
        original_received(self, data)
        if self.conn.their_state is not h11.IDLE:
            disarm(self)  # headers complete: the body's limit is the request guard's

    def connection_lost(self: Any, exc: Exception | None) -> None:
        disarm(self)
        original_lost(self, exc)

    H11Protocol.connection_made = connection_made  # type: ignore[method-assign]
    H11Protocol.data_received = data_received  # type: ignore[method-assign]
    H11Protocol.connection_lost = connection_lost  # type: ignore[method-assign]


def _peer(protocol: Any) -> str:
    client = getattr(protocol, "client", None)
    return f"{client[0]}:{client[1]}" if client else "a client"

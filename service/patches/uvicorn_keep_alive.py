"""uvicorn's keep-alive timer leaves open a connection whose next request is already in the socket (a patch of both HTTP protocols).

After each response uvicorn arms a timer (`timeout_keep_alive`, 5 s) that closes the
connection unless new bytes arrive first. When the worker's event loop was busy for
longer than that (a long request holding the GIL, a full garbage collection, a stopped
or starved process), the client's next request could be in the socket, sent in time,
while the timer was already due: uvloop runs due timers before it polls the sockets, so
`timeout_keep_alive_handler` closed the connection without reading it, and the client
saw its request end with no answer (httpx.ReadError; measured: a burst of concurrent
kept-alive requests lost one in 1 of 1-4 rounds of 5 on this 2-core host;
tests/faults/test_fault_workers.py stops a worker for longer than the timer and loses it
every time without the patch). Here the handler first asks the kernel how many bytes
wait on the socket (FIONREAD); if any do, the client did send in time: the timer is armed
again and the loop reads them next (which cancels it, as any read does).

`bentoml serve --timeout-keep-alive 60` (uvicorn's `timeout_keep_alive`) only makes the
window rarer (a stall must then outlast 60 s), at the cost of every idle connection held
12 times longer; no uvicorn or BentoML setting makes the timer look at the socket.
Pinned: uvicorn 0.54.0, checked at start-up.
"""

from __future__ import annotations

import fcntl
import logging
import struct
import sys
import termios
from collections.abc import Callable
from typing import Any

from service.patches import Pin, check_signature, check_source, mark_active

PIN = Pin(
    module=__name__,
    distribution="uvicorn",
    version="0.54.0",
    target="uvicorn.protocols.http.{h11_impl.H11Protocol,httptools_impl.HttpToolsProtocol}.timeout_keep_alive_handler",
    purpose="the keep-alive timer does not close a connection whose next request is waiting in the socket",
)
_PATCHED_FLAG = "_modelserve_keep_alive_reads_first"
log = logging.getLogger("modelserve.connections")


def check() -> None:
    """PatchMismatch unless uvicorn is the pinned version and its keep-alive timer is armed, handled and cancelled as the patch expects."""
    PIN.check_version()
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    for protocol in (H11Protocol, HttpToolsProtocol):
        handler = _original(protocol)
        check_signature(PIN, handler, ["self"])
        check_source(PIN, handler, "self.transport.close()")
        check_source(PIN, protocol.__init__, "self.timeout_keep_alive_task", "self.timeout_keep_alive = config.timeout_keep_alive")
        check_source(PIN, _original(protocol, "on_response_complete"), "self.loop.call_later(", "self.timeout_keep_alive_handler")
        check_source(PIN, protocol._unset_keepalive_if_required, "self.timeout_keep_alive_task.cancel()")
        check_source(PIN, _original(protocol, "data_received"), "self._unset_keepalive_if_required()")  # a read cancels the timer


def _original(protocol: type, name: str = "timeout_keep_alive_handler") -> Callable[..., Any]:
    """A protocol method as uvicorn wrote it, also once a patch here has wrapped it."""
    method = getattr(protocol, name)
    return getattr(method, "__wrapped__", method)


def bytes_waiting(transport: Any) -> int:
    """How many received bytes wait unread in the transport's socket (0 when there is no socket or it is closed)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        answer = fcntl.ioctl(sock.fileno(), termios.FIONREAD, struct.pack("i", 0))
    except (OSError, ValueError):  # closed (fileno -1), or not a socket
        return 0
    return int.from_bytes(answer, sys.byteorder, signed=True)


def keep_alive_while_a_request_waits() -> None:
    """Patch both protocols' keep-alive handler (idempotent)."""
    check()
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    for protocol in (H11Protocol, HttpToolsProtocol):
        if not getattr(protocol, _PATCHED_FLAG, False):
            _patch(protocol)
    mark_active(PIN)


def _patch(protocol: Any) -> None:
    original = protocol.timeout_keep_alive_handler

    def timeout_keep_alive_handler(self: Any) -> None:
        waiting = 0 if self.transport.is_closing() else bytes_waiting(self.transport)
        if waiting:
            log.info("keep-alive timer due with %d bytes of a next request unread (the event loop was busy); reading them", waiting)
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
            return
        original(self)

    timeout_keep_alive_handler.__wrapped__ = original  # type: ignore[attr-defined]  # for `check`
    protocol.timeout_keep_alive_handler = timeout_keep_alive_handler
    setattr(protocol, _PATCHED_FLAG, True)

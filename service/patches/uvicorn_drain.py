"""SIGTERM drains in the workers: every request a connection has begun is answered, then it closes (a patch of uvicorn's shutdown).

What BentoML 1.4 (circus + uvicorn) did, measured: the workers stop accepting at
SIGTERM while the arbiter's listening socket keeps queueing connections (circus_drain.py
stops that), and uvicorn closes at once a connection with no request parsed yet,
including one accepted a moment before whose request was on its way: 3-4 requests in
flight lost, 4-6 reset under 4 clients and 32-34 under 32 with the queued ones
(benchmarks/drain.py). Two patches of uvicorn 0.54.0, made at import:

- Server.shutdown accepts every connection still queued on the socket, then fills the
  queue's last place with a connection of its own before it closes it
  (service/http/listener.py), so that a request sent on a connection the kernel had
  accepted is answered, not reset;
- a connection's shutdown closes only a connection idle between requests (nothing begun,
  nothing waiting unread in its socket); one that is new, is receiving a request's
  headers, or has a next request unread is answered, with `Connection: close`, and the
  header timeout (uvicorn_header_timeout.py) closes one whose request never comes.

No uvicorn setting does this: `timeout_graceful_shutdown` bounds the wait for requests
already being answered, it does not keep a connection open for one that has not begun.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

from service.http.listener import plug, take_queued
from service.patches import Pin, check_signature, check_source, mark_active
from service.patches.uvicorn_keep_alive import bytes_waiting

PIN = Pin(
    module=__name__,
    distribution="uvicorn",
    version="0.54.0",
    target="uvicorn.Server.shutdown, uvicorn.protocols.http.{h11_impl.H11Protocol,httptools_impl.HttpToolsProtocol}.shutdown",
    purpose="at SIGTERM, answer every request a connection has begun before closing it",
)
_PATCHED_FLAG = "_modelserve_drains"
log = logging.getLogger("modelserve.drain")
PLUG_ATTEMPTS = 20  # clients that take the last place first are answered, and the plug tried again


def check() -> None:
    """PatchMismatch unless uvicorn is the pinned version and its shutdown paths and state are what the patches use."""
    PIN.check_version()
    import h11
    from uvicorn import Server
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    check_signature(PIN, _original(Server, "shutdown"), ["self", "sockets"])
    check_source(PIN, _original(Server, "shutdown"), "for server in self.servers:", "connection.shutdown()")
    check_source(PIN, Server.startup, "config.http_protocol_class(", "server_state=self.server_state", "app_state=self.lifespan.state")
    for protocol in (H11Protocol, HttpToolsProtocol):
        check_signature(PIN, protocol.__init__, ["self", "config", "server_state", "app_state", "_loop"])
        check_signature(PIN, _original(protocol, "shutdown"), ["self"])
        check_signature(PIN, _original(protocol, "on_response_complete"), ["self"])
        check_source(PIN, _original(protocol, "shutdown"), "self.cycle.response_complete", "self.cycle.keep_alive = False")
    if not hasattr(h11.Connection, "trailing_data"):
        raise PIN.mismatch("h11.Connection.trailing_data, the bytes of a next request h11 holds, is gone")


def _original(owner: type, name: str) -> Any:
    method = getattr(owner, name)
    return getattr(method, "__wrapped__", method)


def drain_on_sigterm() -> None:
    """Patch uvicorn's Server and both HTTP protocols (idempotent)."""
    check()
    from uvicorn import Server
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    if not getattr(Server, _PATCHED_FLAG, False):
        _accept_queued_before_closing(Server)
    for protocol in (H11Protocol, HttpToolsProtocol):
        if not getattr(protocol, _PATCHED_FLAG, False):
            _answer_begun_requests(protocol)
    mark_active(PIN)


def _accept_queued_before_closing(server_class: Any) -> None:
    original_shutdown = server_class.shutdown

    async def shutdown(self: Any, sockets: Any = None) -> None:
        loop = asyncio.get_running_loop()
        listeners = []
        for server in getattr(self, "servers", []):
            listeners += [socket.socket(fileno=os.dup(listener.fileno())) for listener in server.sockets or ()]
            server.close()  # asyncio stops accepting (and closes its copy): from here only the drain takes from the queue
        for listener in listeners:
            try:
                await _drain(self, loop, listener)
            except Exception:  # the drain is an improvement on uvicorn's shutdown: it must never stop it
                log.exception("stopping: draining the listening socket failed; uvicorn's shutdown goes on")
        await original_shutdown(self, sockets)

    shutdown.__wrapped__ = original_shutdown  # type: ignore[attr-defined]  # for `check`
    server_class.shutdown = shutdown
    setattr(server_class, _PATCHED_FLAG, True)


async def _drain(server: Any, loop: asyncio.AbstractEventLoop, listener: socket.socket) -> None:
    """Serve every connection queued on `listener` as uvicorn serves the ones it accepts, then close it with only our plug queued."""
    config = server.config

    def protocol() -> asyncio.Protocol:
        return config.http_protocol_class(config=config, server_state=server.server_state, app_state=server.lifespan.state, _loop=loop)

    held, taken = None, 0
    try:
        listener.listen(0)  # one place left in the queue (the arbiter did it already), which the plug takes
        listener.setblocking(False)
        pluggable = listener.family in (socket.AF_INET, socket.AF_INET6)  # a Unix socket: no TCP acknowledgement to check a plug by
        for _ in range(PLUG_ATTEMPTS):
            for connection in take_queued(listener):
                await loop.connect_accepted_socket(protocol, connection)
                taken += 1
            if not pluggable or (held := await plug(listener)):
                break
        else:
            log.warning("stopping: clients took the listening socket's last place %d times; one may be reset", PLUG_ATTEMPTS)
        if taken:
            log.info("stopping: %d connection(s) queued on the socket accepted, their requests are answered", taken)
    finally:
        listener.close()  # resets what is queued: the plug
        if held is not None:
            held.close()


def _answer_begun_requests(protocol: Any) -> None:
    """A connection that has answered a request and has nothing new closes at shutdown; any other answers its request first."""
    original_shutdown, original_complete = protocol.shutdown, protocol.on_response_complete

    def shutdown(self: Any) -> None:
        self._modelserve_draining = True
        idle = (self.cycle is None or self.cycle.response_complete) and getattr(self, "_modelserve_answered", False)
        if idle and not _request_begun(self):
            original_shutdown(self)
        elif self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
        # else: a new connection, or one receiving headers: on_response_complete closes it after its answer

    def on_response_complete(self: Any) -> None:
        self._modelserve_answered = True
        original_complete(self)
        if getattr(self, "_modelserve_draining", False) and not self.transport.is_closing():
            self.transport.close()  # the server is stopping: this was the connection's last request

    shutdown.__wrapped__, on_response_complete.__wrapped__ = original_shutdown, original_complete  # type: ignore[attr-defined]
    protocol.shutdown, protocol.on_response_complete = shutdown, on_response_complete
    setattr(protocol, _PATCHED_FLAG, True)


def _request_begun(protocol: Any) -> bool:
    """Bytes of a next request have arrived: being parsed (uvicorn_header_timeout.py tracks httptools'), or unread in the socket."""
    if bytes_waiting(protocol.transport):
        return True
    if hasattr(protocol, "conn"):  # h11: the client's state leaves IDLE with a request's first bytes
        import h11

        return protocol.conn.their_state is not h11.IDLE or bool(protocol.conn.trailing_data[0])
    return bool(getattr(protocol, "_modelserve_in_headers", False))

"""SIGTERM drains: new connections are refused at once, every request a connection has begun is answered, then it closes.

What BentoML 1.4 (circus + uvicorn) did, measured: the listening socket belongs to the
arbiter (circus) and stays open until every worker has exited (1.8-2.8 s). The workers
stop accepting at SIGTERM, so every connection made during the drain waited in the
kernel's backlog, was never read, and was reset when the socket finally closed: 32-34
requests sent and lost under 32 clients, 6 under 4 (benchmarks/drain.py). And uvicorn
closes at once a connection with no request parsed yet, including one accepted a moment
before, whose request was on its way: 3-4 requests in flight lost.

Three patches, all made at import (the arbiter and the workers import this service):

- circus's Arbiter.stop first shrinks the listening socket's backlog to nothing (the kernel
  then drops new connection attempts instead of queueing them: the client retries its SYN
  and is refused once the socket is closed, nothing sent) and closes its own copy of it,
  before it stops the workers;
- uvicorn's Server.shutdown accepts every connection still queued on the socket before it
  closes it, so that a request sent on a connection the kernel had accepted is answered,
  not reset;
- uvicorn's connection shutdown closes only a connection idle between requests; one that
  is new or is receiving a request's headers is answered, with `Connection: close`, and the
  header timeout (service/http/connections.py) closes one whose request never comes.

Pinned: circus and uvicorn as in pyproject.toml (uvicorn's version is asserted in connections.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

_PATCHED_FLAG = "_modelserve_drains"
log = logging.getLogger("modelserve.drain")


def drain_on_sigterm() -> None:
    """Patch circus's arbiter and uvicorn's HTTP protocols (idempotent)."""
    from circus.arbiter import Arbiter
    from uvicorn import Server
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    if not getattr(Arbiter, _PATCHED_FLAG, False):
        _close_listeners_first(Arbiter)
    if not getattr(Server, _PATCHED_FLAG, False):
        _accept_queued_before_closing(Server)
    for protocol in (H11Protocol, HttpToolsProtocol):
        if not getattr(protocol, _PATCHED_FLAG, False):
            _answer_begun_requests(protocol)


def _close_listeners_first(arbiter: Any) -> None:
    original_stop = arbiter.stop

    def stop(self: Any, *args: Any, **kwargs: Any) -> Any:
        for sock in self.sockets.values():  # circus closes them again at the end: closing twice is harmless
            sock.listen(0)  # the socket is shared with the workers: no new connection is queued on it from now on
            sock.close()
        log.info("stopping: the listening sockets are closed, new connections are refused; requests begun are answered")
        return original_stop(self, *args, **kwargs)

    arbiter.stop = stop
    setattr(arbiter, _PATCHED_FLAG, True)


def _accept_queued_before_closing(server_class: Any) -> None:
    original_shutdown = server_class.shutdown

    async def shutdown(self: Any, sockets: Any = None) -> None:
        loop = asyncio.get_running_loop()
        for server in getattr(self, "servers", []):
            for listener in server.sockets or ():
                await _take_queued(self, loop, listener.fileno())
        await original_shutdown(self, sockets)

    server_class.shutdown = shutdown
    setattr(server_class, _PATCHED_FLAG, True)


async def _take_queued(server: Any, loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """Accept every connection queued on listening socket `fd` and serve it as uvicorn serves the ones it accepts."""
    config = server.config

    def protocol() -> asyncio.Protocol:
        return config.http_protocol_class(config=config, server_state=server.server_state, app_state=server.lifespan.state, _loop=loop)

    listener = socket.socket(fileno=os.dup(fd))
    try:
        listener.listen(0)  # no new connection is queued while these are taken
        listener.setblocking(False)
        taken = 0
        while True:
            try:
                connection, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            connection.setblocking(False)
            await loop.connect_accepted_socket(protocol, connection)
            taken += 1
        if taken:
            log.info("stopping: %d connection(s) queued on the socket accepted, their requests are answered", taken)
    finally:
        listener.close()


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

    protocol.shutdown, protocol.on_response_complete = shutdown, on_response_complete
    setattr(protocol, _PATCHED_FLAG, True)


def _request_begun(protocol: Any) -> bool:
    """Bytes of a next request have arrived (its headers are being read: service/http/connections.py tracks them)."""
    if hasattr(protocol, "conn"):  # h11: the client's state leaves IDLE with a request's first bytes
        import h11

        return protocol.conn.their_state is not h11.IDLE or bool(protocol.conn.trailing_data[0])
    return bool(getattr(protocol, "_modelserve_in_headers", False))

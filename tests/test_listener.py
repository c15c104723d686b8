"""A stopping worker's listening socket (service/http/listener.py), on real kernel sockets: what the SIGTERM drain relies on."""

from __future__ import annotations

import asyncio
import errno
import select
import socket

import pytest

from service.http.listener import plug, take_queued

pytestmark = pytest.mark.integration

REQUEST = b"POST /predict_price HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"


def connecting(address: tuple[str, int]) -> socket.socket:
    """A client whose connect has begun (non-blocking)."""
    client = socket.socket()
    client.setblocking(False)
    client.connect_ex(address)
    return client


def connected_within(client: socket.socket, seconds: float) -> bool:
    """The kernel completed `client`'s handshake within `seconds`: it is queued on the listener, or accepted."""
    _, ready, _ = select.select([], [client], [], seconds)
    return bool(ready) and client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0


def test_a_drained_listener_queues_no_new_client_and_keeps_what_was_queued() -> None:
    """Closing a listening socket resets what is queued on it, requests sent. The drain set the backlog to 0, and Linux still
    queued one connection: a client reconnecting between the last accept and the close had its request reset (CI, once, in
    tests/faults/test_fault_workers.py). This fails without the plug."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    address = listener.getsockname()
    queued = socket.create_connection(address)  # its handshake is done: it waits in the queue
    listener.listen(0)  # what the arbiter does at SIGTERM
    listener.setblocking(False)
    (accepted,) = take_queued(listener)
    queued.sendall(REQUEST)
    assert accepted.recv(65536) == REQUEST, "a connection queued before the drain is accepted and read"
    held = asyncio.run(plug(listener))
    assert held is not None, "nothing else is queued: the plug takes the place"

    late = connecting(address)
    assert not connected_within(late, 0.5), "a client that connected after the drain began was queued: the close would reset it"
    listener.close()
    held.close()
    _, done, _ = select.select([], [late], [], 5)  # its SYN is retried after 1 s, to a closed socket
    assert done and late.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED, "refused: nothing was sent"
    accepted.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert queued.recv(65536).startswith(b"HTTP/1.1 200"), "the accepted connection outlives the listener"
    for sock in (queued, accepted, late):
        sock.close()


def test_a_client_that_takes_the_last_place_first_is_taken_and_the_plug_tried_again() -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    address = listener.getsockname()
    listener.listen(0)
    listener.setblocking(False)
    first = connecting(address)
    assert connected_within(first, 1), "a backlog of 0 still queues one connection"
    assert asyncio.run(plug(listener)) is None, "the place is taken: the plug is not queued"
    (taken,) = take_queued(listener)
    assert taken.getpeername() == first.getsockname(), "the client that took the place is accepted, to be answered"
    held = asyncio.run(plug(listener))
    assert held is not None
    assert not connected_within(connecting(address), 0.3)
    for sock in (listener, held, first, taken):
        sock.close()

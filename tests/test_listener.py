"""A stopping server's listening socket (service/http/listener.py), on real kernel sockets: what the SIGTERM drain relies on."""

from __future__ import annotations

import errno
import select
import socket

import pytest

from service.http.listener import refuse_new_connections

pytestmark = pytest.mark.integration

REQUEST = b"POST /predict_price HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"


def test_a_listener_being_drained_starts_no_new_connection_and_keeps_the_queued_ones() -> None:
    """Closing a listening socket resets what is queued on it, requests sent. The drain used `listen(0)`, and Linux still queued one
    connection on it: a client reconnecting between the last accept and the close had its request reset (CI, once in
    tests/faults/test_fault_workers.py). This fails with `listen(0)`."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    address = listener.getsockname()
    queued = socket.create_connection(address)  # its handshake is done: it waits in the queue to be accepted
    refuse_new_connections(listener)
    accepted, _ = listener.accept()
    queued.sendall(REQUEST)
    assert accepted.recv(65536) == REQUEST, "a connection queued before the drain is still accepted and read"

    late = socket.socket()
    late.setblocking(False)
    late.connect_ex(address)
    _, connected, _ = select.select([], [late], [], 0.5)
    assert not connected, "a connection begun after the drain began was queued: closing the socket would reset its request"
    listener.close()
    _, done, _ = select.select([], [late], [], 5)  # its SYN is retried after 1 s, to a closed socket
    assert done and late.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED, "refused: nothing was sent"
    for sock in (queued, accepted, late):
        sock.close()

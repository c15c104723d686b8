"""A stopping worker's listening socket: take what the kernel queued, then close it with nobody else's connection queued.

Closing a listening socket resets every connection queued on it, each with a request
its client has already sent. The arbiter (circus_drain.py) sets the backlog to 0 at
SIGTERM, but Linux still queues one connection on a backlog of 0 (`sk_acceptq_is_full`
is `queued > backlog`): a client that reconnected between a worker's last accept and its
close had its request reset (CI saw it once in tests/faults/test_fault_workers.py;
tests/test_listener.py shows it). So the worker fills that one place itself: after
taking what is queued, it connects a socket of its own (the plug) and makes sure the
plug is the connection queued (it sends an empty line, which HTTP servers skip; only a
queued connection acknowledges it). From then on the kernel answers no client's
handshake (its SYN is dropped, retried, and refused once the socket is closed: nothing
sent, safe to retry), and the close resets the plug only. If a client took the place
first, it is taken, answered, and the plug tried again.

A socket filter that drops new SYNs would do it in one call, but attaching one to a TCP
socket needs CAP_NET_ADMIN on recent kernels (Linux commit 5d39580f68e6): on this
machine's 6.18 kernel the image, which runs as a user without it, got EPERM.
What is left: a client whose SYN the kernel answered just before the plug was queued,
and whose handshake's last ACK comes after it, is dropped; on one host that is
microseconds.
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import termios

PLACE_TAKEN_S = 0.1  # a connect to the listener on this host completes at once, unless the kernel dropped its SYN (the place is taken)
ACKNOWLEDGED_S = 0.05  # a queued connection acknowledges the plug's byte at once (quick-ack at a connection's start)


def take_queued(listener: socket.socket) -> list[socket.socket]:
    """Accept every connection queued on non-blocking `listener` now; each comes back non-blocking."""
    taken = []
    while True:
        try:
            connection, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return taken
        connection.setblocking(False)
        taken.append(connection)


async def plug(listener: socket.socket) -> socket.socket | None:
    """A connection of this process to `listener` that is now its one queued connection (backlog 0), or None if the place was taken.

    The caller keeps it open until the listener is closed, then closes it."""
    loop = asyncio.get_running_loop()
    own = socket.socket(listener.family, socket.SOCK_STREAM)
    own.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(own, _own_address(listener)), PLACE_TAKEN_S)
        await loop.sock_sendall(own, b"\r\n")
        deadline = loop.time() + ACKNOWLEDGED_S
        while _unacknowledged(own):  # the handshake's last ACK was dropped: a client was queued between our SYN and it
            if loop.time() > deadline:
                own.close()
                return None
            await asyncio.sleep(0.0005)
        return own
    except (TimeoutError, OSError):  # its SYN was dropped: the place is taken
        own.close()
        return None


def _own_address(listener: socket.socket) -> tuple[str, int]:
    host, port = listener.getsockname()[:2]
    if host in ("0.0.0.0", "::"):  # listening on every address: this host's loopback is one of them
        host = "127.0.0.1" if listener.family == socket.AF_INET else "::1"
    return host, port


def _unacknowledged(sock: socket.socket) -> int:
    """Bytes sent on `sock` that the peer has not acknowledged (SIOCOUTQ)."""
    answer = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    return int(struct.unpack("i", answer)[0])

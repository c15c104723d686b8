"""A stopping server's listening socket: refuse new connections, keep the ones the kernel already queued.

Closing a listening socket resets every connection queued on it, each with a request
its client has already sent. So a drain must first stop the kernel from completing new
handshakes, then accept what is queued, then close. `listen(0)` does not stop it: Linux
still queues one connection on a backlog of 0 (`sk_acceptq_is_full` is `queued >
backlog`), and a client that reconnects in the moment between the last accept and the
close had its request reset (tests/test_patches.py shows it; CI saw it once in
tests/faults/test_fault_workers.py). A socket filter that drops every SYN on the
listener does stop it: the kernel answers no new handshake, the client's SYN is
retried and refused once the socket is closed (nothing sent, safe to retry), while
handshakes already under way (their final ACK passes the filter) still complete and are
accepted with the queue. The filter is the socket's, shared by every process that holds
it (the arbiter and each worker), and is inherited by connections accepted after it,
which never receive a lone SYN.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys

SO_ATTACH_FILTER = 26  # <asm-generic/socket.h>; Python's socket module does not name it

# Classic BPF over the TCP header (a TCP socket's filter sees the packet from its TCP header on):
# load the flags byte, keep SYN and ACK, a lone SYN (a new handshake) is dropped, anything else passes.
_TCP_FLAGS_OFFSET, _SYN, _ACK = 13, 0x02, 0x10
_DROP_LONE_SYN = [
    (0x30, 0, 0, _TCP_FLAGS_OFFSET),  # ldb [13]
    (0x54, 0, 0, _SYN | _ACK),  # and #0x12
    (0x15, 1, 0, _SYN),  # jeq #0x02 -> drop
    (0x06, 0, 0, 0xFFFFFFFF),  # ret: the whole packet
    (0x06, 0, 0, 0),  # drop: ret 0
]


def refuse_new_connections(sock: socket.socket) -> None:
    """From now on the kernel starts no new connection on listening socket `sock`; those it has queued stay to be accepted."""
    if sys.platform != "linux":  # no socket filters: a backlog of 0 still queues one more connection
        sock.listen(0)
        return
    program = b"".join(struct.pack("HBBI", *instruction) for instruction in _DROP_LONE_SYN)
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HP", len(_DROP_LONE_SYN), ctypes.addressof(buffer))  # struct sock_fprog; the kernel copies the program
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)

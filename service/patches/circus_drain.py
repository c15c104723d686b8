"""At SIGTERM, the arbiter stops new connections from queueing before it stops the workers (a patch of circus's Arbiter.stop).

BentoML 1.4 serves through circus (the `kantoku` distribution): the listening socket
belongs to the arbiter and stays open until every worker has exited (1.8-2.8 s
measured). The workers stop accepting at SIGTERM, so every connection made during the
drain waited in the kernel's backlog, was never read, and was reset when the socket
finally closed: 32-34 requests sent and lost under 32 clients, 6 under 4
(benchmarks/drain.py). Here Arbiter.stop first shrinks the listening sockets' backlog to
0 and closes its own copy of them. The kernel still queues one connection on a backlog
of 0: each worker's drain fills that place with a connection of its own before it closes
the socket (service/http/listener.py), so new connection attempts are dropped instead of
queued; the client retries its SYN and is refused once the socket is closed, nothing
sent. The workers' side of the drain is uvicorn_drain.py.
No circus or BentoML setting does this: BentoML's `--backlog` sizes the queue, it
cannot empty it at shutdown.
"""

from __future__ import annotations

import logging
from typing import Any

from service.patches import Pin, check_signature, check_source, mark_active

PIN = Pin(
    module=__name__,
    distribution="kantoku",
    version="0.18.3",
    target="circus.arbiter.Arbiter.stop",
    purpose="at SIGTERM, refuse new connections before the workers stop",
)
_PATCHED_FLAG = "_modelserve_drains"
log = logging.getLogger("modelserve.drain")


def check() -> None:
    """PatchMismatch unless circus is the pinned version, Arbiter.stop takes no argument and the arbiter keeps its sockets."""
    PIN.check_version()
    from circus.arbiter import Arbiter

    check_signature(PIN, _original(Arbiter), ["self"])
    check_source(PIN, Arbiter.__init__, "self.sockets = CircusSockets(sockets)")


def _original(arbiter: type) -> Any:
    stop = arbiter.stop  # type: ignore[attr-defined]
    return getattr(stop, "_modelserve_original", stop)


def close_listeners_first() -> None:
    """Patch circus's Arbiter.stop (idempotent)."""
    check()
    from circus.arbiter import Arbiter

    mark_active(PIN)
    if getattr(Arbiter, _PATCHED_FLAG, False):
        return
    original_stop = Arbiter.stop

    def stop(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            for sock in self.sockets.values():  # circus closes them again at the end: closing twice is harmless
                sock.listen(0)  # the socket is shared with the workers: one place left in its queue, which each worker's drain plugs
                sock.close()
            log.info("stopping: the listening sockets are closed, new connections are refused; requests begun are answered")
        except Exception:  # an error here once kept the arbiter from stopping at all (docker stop waited 30 s and killed it)
            log.exception("stopping: closing the listening sockets failed; the arbiter stops as circus does")
        return original_stop(self, *args, **kwargs)

    stop._modelserve_original = original_stop  # type: ignore[attr-defined]  # for `check`
    Arbiter.stop = stop  # type: ignore[method-assign]
    setattr(Arbiter, _PATCHED_FLAG, True)

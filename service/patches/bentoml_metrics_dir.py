"""Where BentoML keeps a server's Prometheus values: set per server (BentoML's internal container), and whether this process is a worker.

BentoML's default is one directory per user, BENTOML_HOME/prometheus_multiproc_dir, and
every `bentoml serve` that starts empties it (`ensure_prometheus_dir`): a second server
on the host wiped the first one's per-version series in the middle of a canary watch,
which then saw no traffic. service/http/metrics.py gives each server a directory of its
own through the provider BentoML reads it from (`BentoMLContainer.prometheus_multiproc_dir`,
which BentoML's own pytest plugin sets the same way), in the process that starts the
server; `server_context.worker_index` tells that process from its workers. No public
setting: BentoML's configuration has no key for the directory.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from service.patches import Pin, check_source, mark_active

PIN = Pin(
    module=__name__,
    distribution="bentoml",
    version="1.4.39",
    target="bentoml._internal.configuration.containers.BentoMLContainer.prometheus_multiproc_dir, bentoml._internal.context.server_context",
    purpose="a Prometheus multiprocess directory of each server's own",
)


def check() -> None:
    """PatchMismatch unless BentoML is the pinned version, reads the directory from the provider and knows a worker's index."""
    PIN.check_version()
    from _bentoml_impl.server import serving as new_serving
    from bentoml import serving
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.context import server_context

    if not callable(getattr(BentoMLContainer.prometheus_multiproc_dir, "set", None)):
        raise PIN.mismatch("BentoMLContainer.prometheus_multiproc_dir can no longer be set")
    if inspect.signature(serving.ensure_prometheus_dir).parameters["directory"].default is not BentoMLContainer.prometheus_multiproc_dir:
        raise PIN.mismatch("ensure_prometheus_dir no longer reads its directory from BentoMLContainer.prometheus_multiproc_dir")
    check_source(PIN, new_serving.serve_http, "ensure_prometheus_dir()")
    if "worker_index" not in {a.name for a in type(server_context).__attrs_attrs__}:
        raise PIN.mismatch("server_context has no worker_index")


def use_own_directory(choose: Callable[[], str]) -> str | None:
    """In the process that starts the server, make BentoML create, empty and hand its workers the directory `choose()` names.

    In a worker (BentoML set its index; the directory is already chosen) nothing is
    chosen and None is returned.
    """
    check()
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.context import server_context

    mark_active(PIN)
    if server_context.worker_index is not None:
        return None
    path = choose()
    BentoMLContainer.prometheus_multiproc_dir.set(path)
    return path

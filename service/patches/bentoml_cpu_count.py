"""The CPU quota of this process's cgroup, read as BentoML reads it for its own `workers="cpu_count"`.

Not a patch but a read of BentoML's internal CpuResource: it honours a cgroup CPU
quota (cgroup v1 and v2), which os.cpu_count() and sched_getaffinity() do not (a
container limited to 2 CPUs on a 64-core host would start 64 workers and size its
thread pools for 64). service/core/config.py's `available_cpus` caps the CPU affinity
with it; the worker count (MODELSERVE_WORKERS=0) and every thread pool are sized from
that, and BentoML's public `workers="cpu_count"` computes the number but does not give
it back.
"""

from __future__ import annotations

import functools

from service.patches import Pin, check_signature, mark_active

PIN = Pin(
    module=__name__,
    distribution="bentoml",
    version="1.4.39",
    target="bentoml._internal.resource.CpuResource.from_system",
    purpose="read the CPUs a cgroup quota allows, for the worker count and thread pools",
)


def check() -> None:
    """PatchMismatch unless BentoML is the pinned version and CpuResource.from_system still takes no argument."""
    PIN.check_version()
    try:
        from bentoml._internal.resource import CpuResource
    except ImportError as exc:
        raise PIN.mismatch(f"it cannot be imported ({exc})") from None
    check_signature(PIN, CpuResource.from_system, [])


@functools.cache
def _checked() -> None:
    check()  # once per process: thread pools ask for the count often
    mark_active(PIN)


def cpu_quota() -> float:
    """The CPUs this process's cgroup quota allows (the host's count where there is no quota)."""
    _checked()
    from bentoml._internal.resource import CpuResource

    return float(CpuResource.from_system())

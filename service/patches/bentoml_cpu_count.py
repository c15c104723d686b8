"""The CPUs this process may use, counted as BentoML counts them for its own `workers="cpu_count"`.

Not a patch but a read of BentoML's internal CpuResource: it honours a cgroup CPU
quota, which os.cpu_count() and sched_getaffinity() do not (a container limited to
2 CPUs on a 64-core host would start 64 workers). MODELSERVE_WORKERS=0 uses it, and
the worker group needs the number (service/core/workers.py), which BentoML's public
`workers="cpu_count"` computes but does not give back.
"""

from __future__ import annotations

from service.patches import Pin, check_signature, mark_active

PIN = Pin(
    module=__name__,
    distribution="bentoml",
    version="1.4.39",
    target="bentoml._internal.resource.CpuResource.from_system",
    purpose="count the CPUs a cgroup quota allows, for MODELSERVE_WORKERS=0",
)


def check() -> None:
    """PatchMismatch unless BentoML is the pinned version and CpuResource.from_system still takes no argument."""
    PIN.check_version()
    try:
        from bentoml._internal.resource import CpuResource
    except ImportError as exc:
        raise PIN.mismatch(f"it cannot be imported ({exc})") from None
    check_signature(PIN, CpuResource.from_system, [])


def cpu_count() -> int:
    """At least 1: the CPUs this process may use, cgroup quota included."""
    check()
    from bentoml._internal.resource import CpuResource

    mark_active(PIN)
    return max(1, int(CpuResource.from_system()))

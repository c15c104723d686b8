"""Which int8 kernels onnxruntime runs on this CPU, read from the CPU's flags.

onnxruntime's MLAS picks its u8s8 GEMM/conv kernels by CPU feature (mlas/lib/platform.cpp):
AVX2, then AVX-VNNI, AVX-512 core (BW/DQ/VL), AVX-512 VNNI, AMX, the later overriding the
earlier. The VNNI and AMX kernels sum u8 x s8 products in int32 and are exact; the AVX2 and
AVX-512-core kernels (vpmaddubsw) first add pairs of products in int16, which saturates when
both are large, so the same INT8 file can answer differently there. That is why the INT8
variant is checked on the CPU that loads it (service/core/runtime.py), and why /models and the
batch summary say which kernels ran.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Any

FLAGS = ("avx2", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")


def cpu_flags(cpuinfo: str) -> tuple[str, set[str]]:
    """(model name, flags) from the text of /proc/cpuinfo (first processor)."""
    model, flags = "", set[str]()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


def int8_kernels(machine: str, flags: set[str]) -> tuple[str, bool]:
    """(the u8s8 kernels onnxruntime picks, whether they are exact), following MLAS's order of choice."""
    if machine.lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return f"{machine}: 8-bit dot-product kernels, int32 sums (exact)", True
    if "avx2" not in flags:
        return "SSE: 16-bit products, int32 sums (exact)", True
    kernels, exact = "AVX2 without VNNI: u8 x s8 pairs summed in int16 (vpmaddubsw), can saturate", False
    if "avx_vnni" in flags:
        kernels, exact = "AVX-VNNI: int32 sums (exact)", True
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        kernels, exact = "AVX-512 without VNNI: u8 x s8 pairs summed in int16 (vpmaddubsw), can saturate", False
        if "avx512_vnni" in flags:
            kernels, exact = "AVX-512 VNNI: int32 sums (exact)", True
    if {"amx_tile", "amx_int8"} <= flags:
        kernels, exact = "AMX: int32 sums (exact)", True
    return kernels, exact


@functools.cache
def cpu_report() -> dict[str, Any]:
    """This machine's CPU as /models and the batch summary show it: model, the flags that matter, the int8 kernels."""
    try:
        model, flags = cpu_flags(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:  # not Linux
        model, flags = "", set()
    machine = platform.machine()
    kernels, exact = int8_kernels(machine, flags)
    return {
        "model": model or platform.processor() or machine,
        "machine": machine,
        "flags": [f for f in FLAGS if f in flags],
        "int8_kernels": kernels,
        "int8_exact": exact,
    }

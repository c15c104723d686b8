"""The one prepared device check: providers, CPU-vs-GPU parity, end-to-end img/s over HTTP, memory across reloads.

    python -m benchmarks.gpu [--photos DIR] [--clients 1,64,256] [--seconds 10] [--workers N]

Runs anywhere; on a machine with an NVIDIA GPU (see ../shared/GPU.md for getting
onnxruntime-gpu there) it checks, in one command of a few minutes:

1. the providers: /models must report CUDAExecutionProvider (TensorRT when libnvinfer loads);
2. parity: the image model on the GPU against the CPU on real photos, labels equal and
   probabilities within 1e-3;
3. the raw session's img/s on pre-decoded photos (CPU; GPU with io-binding at batch 1,
   32 and 256): the ceiling;
4. end-to-end img/s and p50/p99 over HTTP with real JPEGs (hey) at each client count,
   with the service's defaults for the host (batching on for GPU providers);
5. memory across 30 hot reloads (GPU memory from nvidia-smi, else the worker's RSS).

On a CPU-only machine the GPU rows say so and the rest runs on the CPU. Prints a table,
writes benchmarks/results/gpu.md and gpu.png, and exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

from benchmarks.launch import ROOT, start_server
from benchmarks.load import RESULTS, SHARED, Run, run_hey
from benchmarks.report import figure
from service.core.preprocessing import decode_image
from service.core.registry import CURRENT_FILE, METADATA_FILE, Registry
from service.core.runtime import LoadedModel, load_model
from service.core.sessions import GPU_PROVIDERS, cores, resolve_providers

MODEL = "image_classifier"
TOKEN = "gpu-check"
PARITY_TOLERANCE = 1e-3
RELOADS = 30
FLAT_TOLERANCE = 0.05  # memory may settle during the first reloads (allocator arenas), then must stay put
RAW_SECONDS = 3.0


def photos(folder: Path | None) -> list[bytes]:
    candidates = [folder] if folder else [SHARED / "cats_vs_dogs_small" / "test", ROOT / ".gpu" / "photos"]
    for candidate in candidates:
        found = sorted(p for p in candidate.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg")) if candidate and candidate.is_dir() else []
        if found:
            return [p.read_bytes() for p in found[:256]]
    return [(ROOT / "tests" / "fixtures" / name).read_bytes() for name in ("cat.jpg", "dog.jpg")]


def raw_rate(model: LoadedModel, pixels: np.ndarray, batch: int) -> float:
    """Images/s of one session called back to back on pre-decoded photos (io-binding on GPUs)."""
    chunk = model.feed(list(np.concatenate([pixels] * (batch // len(pixels) + 1))[:batch]))
    model.infer(chunk)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < RAW_SECONDS:
        model.infer(chunk)
        done += batch
    return done / (time.perf_counter() - started)


def parity(cpu: LoadedModel, gpu: LoadedModel, pixels: np.ndarray) -> tuple[bool, str]:
    a, b = cpu.predict(list(pixels)), gpu.predict(list(pixels))
    labels = sum(x["label"] == y["label"] for x, y in zip(a, b, strict=True))
    worst = max(abs(x["probabilities"][k] - y["probabilities"][k]) for x, y in zip(a, b, strict=True) for k in x["probabilities"])
    ok = labels == len(a) and worst <= PARITY_TOLERANCE
    return ok, f"{labels}/{len(a)} labels equal, max |p_gpu - p_cpu| = {worst:.2e} (limit {PARITY_TOLERANCE:g})"


def two_version_registry(work: Path) -> Path:
    """A copy of models/ whose image model has a second version (same files): reloads have something to swap."""
    root = work / "models"
    shutil.copytree(ROOT / "models", root)
    current = Registry(root).current(MODEL)
    second = root / MODEL / str(current.version + 1000)
    shutil.copytree(current.path, second)
    metadata = json.loads((second / METADATA_FILE).read_text())
    metadata["version"] = current.version + 1000
    (second / METADATA_FILE).write_text(json.dumps(metadata))
    return root


def memory_mib(worker_pids: list[int], gpu: bool) -> float:
    if gpu and shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], capture_output=True, text=True)
        return float(out.stdout.split()[0])
    return sum(psutil.Process(pid).memory_info().rss for pid in worker_pids) / 2**20


def reload_memory(url: str, root: Path, server_pid: int, gpu: bool) -> dict[int, float]:
    """Memory after 0, 10 and RELOADS swaps between the two versions (each loaded, checked, warmed, swapped)."""
    workers = [p.pid for p in psutil.Process(server_pid).children(recursive=True)]
    versions = sorted(Registry(root).versions(MODEL))
    memory = {0: memory_mib(workers, gpu)}
    with httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        for i in range(1, RELOADS + 1):
            (root / MODEL / CURRENT_FILE).write_text(f"{versions[i % 2]}\n")
            assert client.post("/admin/reload", json={"model": MODEL}).status_code == 200
            if i in (10, RELOADS):
                memory[i] = memory_mib(workers, gpu)
    return memory


def http_rows(url: str, jpeg: bytes, clients: list[int], seconds: float) -> list[Run]:
    make = lambda i: {"files": [("images", ("photo.jpg", jpeg, "image/jpeg"))]}  # noqa: E731
    asyncio.run(run_hey(url, "classify_image", 4, 2, make))  # warm-up
    return [asyncio.run(run_hey(url, "classify_image", c, seconds, make)) for c in clients]


def plot(rows: list[Run], raw: dict[str, float], path: Path) -> None:
    with figure(path, 1, 2, size=(11, 4)) as (_, axes):
        left, right = axes[0]
        x = [r.clients for r in rows]
        left.plot(x, [sum(r.codes.values()) / r.seconds for r in rows], "o-", label="HTTP, real JPEGs")
        for name, rate in raw.items():
            left.axhline(rate, linestyle="--", linewidth=1, label=f"raw session, {name}")
        right.plot(x, [r.p50_p99()[0] for r in rows], "o-", label="p50")
        right.plot(x, [r.p50_p99()[1] for r in rows], "o-", label="p99")
        left.set(xlabel="clients", ylabel="images/s", xscale="log", title="Throughput")
        right.set(xlabel="clients", ylabel="ms", xscale="log", yscale="log", title="Latency")


def run_checks(args: argparse.Namespace, lines: list[str]) -> tuple[bool, list[Run], dict[str, float]]:
    providers = resolve_providers(["tensorrt", "cuda", "cpu"])
    gpu = any(p in GPU_PROVIDERS for p in providers)
    version = Registry(ROOT / "models").current(MODEL)
    images = photos(args.photos)
    cpu = load_model(version, ["CPUExecutionProvider"])
    pixels = np.stack([decode_image(data, cpu.assets) for data in images])
    lines.append(f"- host: {cores()} cores; providers here: {providers}; {len(images)} real JPEGs")
    raw = {"CPU, batch 32": raw_rate(cpu, pixels, 32)}
    ok = True
    if gpu:
        device = load_model(version, providers)
        passed, detail = parity(cpu, device, pixels)
        ok &= passed
        lines.append(f"- parity GPU vs CPU on {len(pixels)} photos: {'ok' if passed else 'FAILED'}: {detail}")
        raw |= {f"{device.providers[0]}, io-binding, batch {b}": raw_rate(device, pixels, b) for b in (1, 32, 256)}
    else:
        lines.append("- no GPU here: the parity check and the GPU rows need one (../shared/GPU.md)")
    lines += [f"- raw session, {name}: {rate:,.0f} img/s" for name, rate in raw.items()]

    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    root = two_version_registry(work)
    workers = args.workers or (max(1, cores() // 2) if gpu else 1)
    server = start_server(
        root, work / "server.log", MODELSERVE_ADMIN_TOKEN=TOKEN, MODELSERVE_WORKERS=str(workers), MODELSERVE_RELOAD_POLL_S="0"
    )
    try:
        served = httpx.get(f"{server.url}/models").json()
        serving = next(m for m in served["models"] if m["name"] == MODEL)["providers"]
        if gpu and not any(p in GPU_PROVIDERS for p in serving):
            ok = False
        lines.append(f"- service ({workers} worker(s)) reports {serving} for {MODEL}" + ("" if not gpu or ok else ": NOT ON THE GPU"))
        rows = http_rows(server.url, images[0], [int(c) for c in args.clients.split(",")], args.seconds)
        before, after = reload_memory(server.url, root, server.process.pid, gpu)
        lines.append(
            f"- {'GPU memory' if gpu else 'worker RSS'} across {RELOADS} reloads: {before:,.0f} MiB before, {after:,.0f} MiB after"
        )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return ok, rows, raw


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, help="folder of JPEG photos (default: ../shared/data/cats_vs_dogs_small/test, .gpu/photos)")
    parser.add_argument("--clients", default="1,64,256")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=0, help="service workers (default: half the cores on a GPU host, 1 otherwise)")
    args = parser.parse_args()
    started = time.monotonic()
    lines: list[str] = []
    ok, rows, raw = run_checks(args, lines)
    lines += ["", "| clients | img/s | p50 ms | p99 ms | non-200 |", "|---:|---:|---:|---:|---:|"]
    for run in rows:
        p50, p99 = run.p50_p99()
        total = sum(run.codes.values())
        lines.append(
            f"| {run.clients} | {total / run.seconds:,.0f} | {p50:,.1f} | {p99:,.1f} | {total - run.codes.get(200, 0) + run.transport_errors} |"
        )
    lines.append(f"\n{'all checks passed' if ok else 'A CHECK FAILED'} in {time.monotonic() - started:.0f} s")
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gpu.md").write_text(f"# Device check ({os.uname().nodename})\n\n" + "\n".join(lines) + "\n")
    plot(rows, raw, RESULTS / "gpu.png")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Health and a cheap endpoint while the heaviest requests the limits allow are decoding.

    python -m benchmarks.health [--seconds 20] [--streams 2]

Starts `bentoml serve` with the default limits, builds the heaviest image request they
allow (PNGs, which have no reduced-scale decoding, up to MODELSERVE_MAX_REQUEST_PIXELS in
all, each within MODELSERVE_MAX_IMAGE_PIXELS), keeps `--streams` of them in flight back to
back, and meanwhile polls GET /readyz and POST /sentiment every 20 ms. A container
healthcheck or an orchestrator's probe is what /readyz latency decides. Prints a table;
writes benchmarks/results/health.md and health.png.
"""

from __future__ import annotations

import argparse
import io
import statistics
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from benchmarks.launch import ROOT, start_server
from benchmarks.load import RESULTS
from benchmarks.report import figure
from service.core.config import Settings

POLL_EVERY_S = 0.02
TEXT = {"texts": ["A moving, beautifully acted film."]}


def heaviest_request(settings: Settings) -> list[tuple[str, tuple[str, bytes]]]:
    """PNGs of the largest allowed size (6:4), as many as the request pixel budget takes."""
    pixels = min(settings.max_image_pixels, settings.max_request_pixels)
    width = int((pixels * 1.5) ** 0.5)
    height = pixels // width
    ramp = np.tile(np.arange(width, dtype=np.uint8), (height, 1))
    buffer = io.BytesIO()
    Image.fromarray(np.stack([ramp, ramp[::-1], ramp], axis=-1)).save(buffer, "PNG", compress_level=1)
    count = min(settings.max_items, settings.max_request_pixels // (width * height))
    return [("images", (f"{i}.png", buffer.getvalue())) for i in range(count)]


def percentiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.99)] * 1000, ordered[-1] * 1000


def measure(url: str, files: list, seconds: float, streams: int) -> dict[str, list]:
    stop = time.monotonic() + seconds
    samples: dict[str, list] = {"readyz": [], "sentiment": [], "heavy": [], "heavy_codes": [], "timeline": []}

    def heavy() -> None:
        with httpx.Client(base_url=url, timeout=300) as client:
            while time.monotonic() < stop:
                started = time.perf_counter()
                samples["heavy_codes"].append(client.post("/classify_image", files=files).status_code)
                samples["heavy"].append(time.perf_counter() - started)

    threads = [threading.Thread(target=heavy) for _ in range(streams)]
    for thread in threads:
        thread.start()
    with httpx.Client(base_url=url, timeout=60) as client:
        begin = time.monotonic()
        while time.monotonic() < stop:
            for name, call in (("readyz", lambda: client.get("/readyz")), ("sentiment", lambda: client.post("/sentiment", json=TEXT))):
                started = time.perf_counter()
                assert call().status_code == 200
                samples[name].append(time.perf_counter() - started)
            samples["timeline"].append((time.monotonic() - begin, samples["readyz"][-1]))
            time.sleep(POLL_EVERY_S)
    for thread in threads:
        thread.join()
    return samples


def plot(samples: dict[str, list], path: Path) -> None:
    with figure(path, size=(9, 3.8)) as (_, axes):
        ax = axes[0][0]
        t, latency = zip(*samples["timeline"], strict=True)
        ax.plot(t, [v * 1000 for v in latency], ".", markersize=3, label="GET /readyz")
        ax.axhline(50, color="grey", linestyle="--", label="50 ms")
        ax.set(xlabel="seconds", ylabel="ms", title="/readyz while the heaviest allowed image requests decode", yscale="log")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--streams", type=int, default=2, help="heaviest requests kept in flight at once")
    args = parser.parse_args()
    settings = Settings()
    files = heaviest_request(settings)
    mb = sum(len(f[1][1]) for f in files) / 1e6
    server = start_server(ROOT / "models", Path("/tmp") / "health-server.log")
    try:
        samples = measure(server.url, files, args.seconds, args.streams)
    finally:
        server.stop()
    width, height = Image.open(io.BytesIO(files[0][1][1])).size
    lines = [
        f"Heaviest request under the default limits: {len(files)} PNGs of {width}x{height} ({mb:.1f} MB), {args.streams} in flight at a time, {args.seconds:.0f} s.",
        "",
        "| what | requests | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("readyz", "sentiment", "heavy"):
        p50, p99, worst = percentiles(samples[name])
        lines.append(
            f"| {'GET /readyz' if name == 'readyz' else 'POST /sentiment' if name == 'sentiment' else 'the heavy request'} | {len(samples[name])} | {p50:,.1f} | {p99:,.1f} | {worst:,.1f} |"
        )
    codes = {c: samples["heavy_codes"].count(c) for c in sorted(set(samples["heavy_codes"]))}
    lines += ["", f"Heavy requests' status codes: {codes}."]
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "health.md").write_text("# Health under the heaviest allowed requests\n\n" + "\n".join(lines) + "\n")
    plot(samples, RESULTS / "health.png")


if __name__ == "__main__":
    main()

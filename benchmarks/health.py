"""Health and a cheap endpoint while the heaviest requests the limits allow are in flight.

    python -m benchmarks.health [--seconds 20] [--streams 2] [--heavy images|keys|v2-json]

Starts `bentoml serve` with the default limits, keeps `--streams` heavy requests in
flight back to back, and meanwhile polls GET /readyz and POST /sentiment every 20 ms. A
container healthcheck or an orchestrator's probe is what /readyz latency decides. The
heavy requests (`--heavy`):

- images: the heaviest image request the limits allow (PNGs, which have no reduced-scale
  decoding, up to MODELSERVE_MAX_REQUEST_PIXELS in all, each within MODELSERVE_MAX_IMAGE_PIXELS);
- keys: a /predict_price row with a million unknown keys (14 MB of JSON, answered 400);
- v2-json: pixels of the image model as JSON numbers on the v2 protocol (30 MB).

Prints a table; writes benchmarks/results/health[-KIND].md and .png.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing
import queue
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from benchmarks.launch import ROOT, start_server
from benchmarks.load import RESULTS
from benchmarks.report import figure
from service.core.config import Settings

POLL_EVERY_S = 0.02
TEXT = {"texts": ["A moving, beautifully acted film."]}
BASELINE_S = 5.0  # /readyz polled alone first, to tell the heavy requests' effect from a busy machine's
UNKNOWN_KEYS = 1_000_000  # the `keys` request: one row with this many unknown feature names
V2_JSON_BYTES = 30_000_000  # the `v2-json` request: about this much JSON of pixel values


def keys_request() -> dict:
    """One /predict_price row with a million unknown keys: 14 MB of JSON, refused with 400."""
    row = b"{" + b",".join(b'"k%07d": 1' % i for i in range(UNKNOWN_KEYS)) + b"}"
    return {"path": "/predict_price", "content": b'{"rows": [' + row + b"]}", "headers": {"content-type": "application/json"}}


def v2_json_request() -> dict:
    """Pixels of 224x224 RGB images as JSON numbers on /v2/models/image_classifier/infer, about V2_JSON_BYTES in all."""
    rng = np.random.default_rng(0)
    image = ",".join(map(str, rng.integers(0, 256, 224 * 224 * 3))).encode()
    count = max(1, V2_JSON_BYTES // len(image))
    data = b"[" + b",".join([image] * count) + b"]"
    header = b'{"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [%d, 224, 224, 3], "data": ' % count
    return {"path": "/v2/models/image_classifier/infer", "content": header + data + b"}]}", "headers": {"content-type": "application/json"}}


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


def send_heavy(url: str, request: dict, stop_at: float, results: Any) -> None:
    """One stream of heavy requests until `stop_at` (time.time()); (seconds, status) of each to `results`.

    Runs in a process of its own: sending 14-30 MB bodies from a thread of the polling
    process held its GIL, and the polls measured the client's stalls, not the server's.
    """
    request = dict(request)
    path = request.pop("path")
    with httpx.Client(base_url=url, timeout=300) as client:
        while time.time() < stop_at:
            started = time.perf_counter()
            status = client.post(path, **request).status_code
            results.put((time.perf_counter() - started, status))


def measure(url: str, request: dict, seconds: float, streams: int) -> dict[str, list]:
    stop = time.monotonic() + seconds
    samples: dict[str, list] = {"readyz": [], "sentiment": [], "heavy": [], "heavy_codes": [], "timeline": []}
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    senders = [context.Process(target=send_heavy, args=(url, request, time.time() + seconds, results)) for _ in range(streams)]
    for sender in senders:
        sender.start()
    with httpx.Client(base_url=url, timeout=60) as client:
        begin = time.monotonic()
        while time.monotonic() < stop:
            for name, call in (("readyz", lambda: client.get("/readyz")), ("sentiment", lambda: client.post("/sentiment", json=TEXT))):
                started = time.perf_counter()
                assert call().status_code == 200
                samples[name].append(time.perf_counter() - started)
            samples["timeline"].append((time.monotonic() - begin, samples["readyz"][-1]))
            time.sleep(POLL_EVERY_S)
    while any(sender.is_alive() for sender in senders) or not results.empty():
        with contextlib.suppress(queue.Empty):
            took, status = results.get(timeout=1)
            samples["heavy"].append(took)
            samples["heavy_codes"].append(status)
    for sender in senders:
        sender.join()
    return samples


def plot(samples: dict[str, list], path: Path, what: str) -> None:
    with figure(path, size=(9, 3.8)) as (_, axes):
        ax = axes[0][0]
        t, latency = zip(*samples["timeline"], strict=True)
        ax.plot(t, [v * 1000 for v in latency], ".", markersize=3, label="GET /readyz")
        ax.axhline(50, color="grey", linestyle="--", label="50 ms")
        ax.set(xlabel="seconds", ylabel="ms", title=f"/readyz while {what} are in flight", yscale="log")


def heavy_request(kind: str, settings: Settings) -> tuple[dict, str]:
    """The heavy request of `--heavy KIND` (httpx keyword arguments and its path) and a line that says what it is."""
    if kind == "keys":
        request = keys_request()
        return request, f"a /predict_price row with {UNKNOWN_KEYS:,} unknown keys ({len(request['content']) / 1e6:.1f} MB of JSON)"
    if kind == "v2-json":
        request = v2_json_request()
        return request, f"image pixels as JSON numbers on the v2 protocol ({len(request['content']) / 1e6:.1f} MB)"
    files = heaviest_request(settings)
    width, height = Image.open(io.BytesIO(files[0][1][1])).size
    mb = sum(len(f[1][1]) for f in files) / 1e6
    return {
        "path": "/classify_image",
        "files": files,
    }, f"the heaviest image request under the default limits: {len(files)} PNGs of {width}x{height} ({mb:.1f} MB)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--streams", type=int, default=2, help="heaviest requests kept in flight at once")
    parser.add_argument("--heavy", choices=("images", "keys", "v2-json"), default="images", help="which heavy request (see above)")
    args = parser.parse_args()
    request, what = heavy_request(args.heavy, Settings())
    server = start_server(ROOT / "models", Path("/tmp") / "health-server.log")
    try:
        alone = measure(server.url, request, BASELINE_S, 0)  # the same polls with nothing else in flight: this machine's noise
        samples = measure(server.url, request, args.seconds, args.streams)
    finally:
        server.stop()
    lines = [
        f"Heavy request: {what}; {args.streams} in flight at a time, {args.seconds:.0f} s.",
        "",
        "| what | requests | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    p50, p99, worst = percentiles(alone["readyz"])
    lines.append(
        f"| GET /readyz, nothing else in flight ({BASELINE_S:.0f} s before) | {len(alone['readyz'])} | {p50:,.1f} | {p99:,.1f} | {worst:,.1f} |"
    )
    for name in ("readyz", "sentiment", "heavy"):
        p50, p99, worst = percentiles(samples[name])
        lines.append(
            f"| {'GET /readyz' if name == 'readyz' else 'POST /sentiment' if name == 'sentiment' else 'the heavy request'} | {len(samples[name])} | {p50:,.1f} | {p99:,.1f} | {worst:,.1f} |"
        )
    codes = {c: samples["heavy_codes"].count(c) for c in sorted(set(samples["heavy_codes"]))}
    lines += ["", f"Heavy requests' status codes: {codes}."]
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    name = "health" if args.heavy == "images" else f"health-{args.heavy}"
    (RESULTS / f"{name}.md").write_text("# Health under the heaviest allowed requests\n\n" + "\n".join(lines) + "\n")
    plot(samples, RESULTS / f"{name}.png", what.split(" (")[0])


if __name__ == "__main__":
    main()

"""Load test: closed-loop clients against each endpoint, one item per request.

    python -m benchmarks.load                      # starts `bentoml serve` on models/
    python -m benchmarks.load --url http://host:3000 --clients 1,8,32 --seconds 30

For every endpoint and client count: requests/s, p50/p99 latency, 4xx/5xx, and
the mean number of requests BentoML's adaptive batcher merged into one call (read
from /metrics). Prints a table; writes benchmarks/results/load.md and load.png.
The load comes from `wrk` (C, a Lua hook counts 2xx/4xx/5xx) when it is installed
(apt-get install wrk), else from an async httpx client. Either runs on the same
machine as the server and takes CPU from it: on a 2-core box the httpx client
costs more than the server's work for the small models, so prefer wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
HOUSE = [0.06, 0.0, 2.46, 0, 0.488, 7.8, 53.6, 3.2, 3, 193, 17.8, 392.6, 3.0]
FALLBACK_REVIEW = "One of the best films I have seen in years: moving, funny and beautifully acted."
BATCH_RE = re.compile(r'bentoml_service_adaptive_batch_size_(sum|count)\{[^}]*method_name="(\w+)"[^}]*\} ([0-9.e+]+)')


@dataclass
class Run:
    endpoint: str
    clients: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    codes: dict[int, int] = field(default_factory=dict)
    transport_errors: int = 0
    requests_per_batch: float = float("nan")
    percentiles_ms: tuple[float, float] | None = None  # (p50, p99) when the client reports them

    def p50_p99(self) -> tuple[float, float]:
        if self.percentiles_ms is not None:
            return self.percentiles_ms
        ok = sorted(self.latencies)
        if not ok:
            return float("nan"), float("nan")
        return statistics.median(ok) * 1000, ok[min(len(ok) - 1, int(len(ok) * 0.99))] * 1000

    def row(self) -> str:
        p50, p99 = self.p50_p99()
        total = sum(self.codes.values())
        c4 = sum(n for c, n in self.codes.items() if 400 <= c < 500)
        c5 = sum(n for c, n in self.codes.items() if c >= 500)
        return (f"| {self.endpoint} | {self.clients} | {total:,} | {total / self.seconds:,.1f} | {p50:,.1f} | {p99:,.1f} | "
                f"{c4} | {c5} | {self.transport_errors} | {self.requests_per_batch:.1f} |")  # fmt: skip


def payloads() -> dict[str, Callable[[int], dict]]:
    """Real photos and reviews from ../shared when present, else the test fixtures."""
    photos = sorted((SHARED / "cats_vs_dogs_small" / "test").rglob("*.jpg"))[:200] or [ROOT / "tests" / "fixtures" / "cat.jpg"]
    images = [p.read_bytes() for p in photos]
    reviews = [FALLBACK_REVIEW]
    sample = SHARED / "imdb_reviews_sample.csv"
    if sample.is_file():
        import csv

        with open(sample, newline="") as handle:
            reviews = [row["review"] for row, _ in zip(csv.DictReader(handle), range(500))]
    return {
        "classify_image": lambda i: {"files": [("images", ("photo.jpg", images[i % len(images)], "image/jpeg"))]},
        "sentiment": lambda i: {"json": {"texts": [reviews[i % len(reviews)]]}},
        "predict_price": lambda i: {"json": {"rows": [HOUSE]}},
    }


async def batch_counters(client: httpx.AsyncClient) -> dict[str, tuple[float, float]]:
    text = (await client.get("/metrics")).text
    totals: dict[str, list[float]] = {}
    for kind, method, value in BATCH_RE.findall(text):
        pair = totals.setdefault(method, [0.0, 0.0])
        pair[0 if kind == "sum" else 1] += float(value)
    return {m: (s, c) for m, (s, c) in totals.items()}


async def run_load(url: str, endpoint: str, clients: int, seconds: float, make: Callable[[int], dict]) -> Run:
    run = Run(endpoint, clients, seconds)
    limits = httpx.Limits(max_connections=clients + 1, max_keepalive_connections=clients + 1)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        before = await batch_counters(client)
        deadline = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            i = offset
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                try:
                    response = await client.post(f"/{endpoint}", **make(i))
                except httpx.HTTPError:
                    run.transport_errors += 1
                    continue
                run.codes[response.status_code] = run.codes.get(response.status_code, 0) + 1
                if response.status_code == 200:
                    run.latencies.append(time.perf_counter() - start)
                i += clients

        await asyncio.gather(*(worker(k) for k in range(clients)))
        after = await batch_counters(client)
    s0, c0 = before.get(endpoint, (0.0, 0.0))
    s1, c1 = after.get(endpoint, (0.0, 0.0))
    if c1 > c0:
        run.requests_per_batch = (s1 - s0) / (c1 - c0)
    return run


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = %(content_type)s
wrk.body = %(body)s
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) c2 = 0; c4 = 0; c5 = 0; other = 0 end
function response(status, headers, body)
  if status < 300 then c2 = c2 + 1 elseif status >= 500 then c5 = c5 + 1 elseif status >= 400 then c4 = c4 + 1 else other = other + 1 end
end
function done(summary, latency, requests)
  local t2, t4, t5 = 0, 0, 0
  for _, thread in ipairs(threads) do t2 = t2 + thread:get("c2"); t4 = t4 + thread:get("c4"); t5 = t5 + thread:get("c5") end
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %%d %%d %%d %%d %%.3f %%.3f\\n", t2, t4, t5, errors, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def _lua_string(data: bytes) -> str:
    return '"' + "".join(chr(b) if 32 <= b < 127 and chr(b) not in '"\\' else f"\\{b:03d}" for b in data) + '"'


def wrk_body(endpoint: str, make: Callable[[int], dict]) -> tuple[str, bytes]:
    """One fixed request body (content type, bytes) for wrk, built by httpx so it is exactly what a client sends."""
    request = httpx.Request("POST", f"http://localhost/{endpoint}", **make(0))
    return request.headers["content-type"], request.read()


async def _wrk(url: str, endpoint: str, clients: int, seconds: float, make: Callable[[int], dict]) -> Run:
    content_type, body = wrk_body(endpoint, make)
    run = Run(endpoint, clients, seconds)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % {"content_type": _lua_string(content_type.encode()), "body": _lua_string(body)})
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        before = await batch_counters(client)
        threads = str(min(clients, 2))
        result = await asyncio.to_thread(
            subprocess.run, ["wrk", "-t", threads, "-c", str(clients), "-d", f"{seconds:.0f}s", "--timeout", "60s", "-s", script.name, f"{url}/{endpoint}"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        after = await batch_counters(client)
    line = next(l for l in result.stdout.splitlines() if l.startswith("RESULT"))
    c2, c4, c5, errors, p50, p99 = line.split()[1:]
    run.codes = {200: int(c2), 400: int(c4), 500: int(c5)}
    run.transport_errors = int(errors)
    run.percentiles_ms = (float(p50), float(p99))
    s0, k0 = before.get(endpoint, (0.0, 0.0))
    s1, k1 = after.get(endpoint, (0.0, 0.0))
    if k1 > k0:
        run.requests_per_batch = (s1 - s0) / (k1 - k0)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running service (default: start one on --models)")
    parser.add_argument("--models", default=str(ROOT / "models"))
    parser.add_argument("--clients", default="1,8,32,1", help="client counts in order; the last 1 shows latency after the burst")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--endpoints", default="classify_image,sentiment,predict_price")
    parser.add_argument("--out", default="load", help="results file stem under benchmarks/results/")
    parser.add_argument("--client", choices=["wrk", "httpx"], default="wrk" if shutil.which("wrk") else "httpx")
    args = parser.parse_args()

    server = None
    url = args.url
    if url is None:
        from tests.server import start_server

        server = start_server(Path(args.models), Path(tempfile.mkdtemp()) / "server.log")
        url = server.url
    makers = payloads()
    header = ["| endpoint | clients | requests | req/s | p50 ms | p99 ms | 4xx | 5xx | transport errors | requests per batch |",
              "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    print("\n".join(header), flush=True)
    runs = []
    try:
        for endpoint in args.endpoints.split(","):
            for clients in (int(c) for c in args.clients.split(",")):
                runner = _wrk if args.client == "wrk" else run_load
                runs.append(asyncio.run(runner(url, endpoint, clients, args.seconds, makers[endpoint])))
                print(runs[-1].row(), flush=True)
    finally:
        if server is not None:
            server.stop()
    RESULTS.mkdir(exist_ok=True)
    table = "\n".join(header + [r.row() for r in runs])
    note = f"{args.seconds:.0f} s per row, one item per request, closed loop, client: {args.client} on the same machine."
    (RESULTS / f"{args.out}.md").write_text(f"# Load test\n\n{note}\n\n{table}\n")
    _plot(runs, RESULTS / f"{args.out}.png")


def _plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for endpoint in dict.fromkeys(r.endpoint for r in runs):
        mine = [r for r in runs if r.endpoint == endpoint]
        clients = [r.clients for r in mine]
        left.plot(clients, [sum(r.codes.values()) / r.seconds for r in mine], "o-", label=endpoint)
        right.plot(clients, [r.p50_p99()[1] for r in mine], "o-", label=endpoint)
    left.set(xlabel="concurrent clients", ylabel="requests/s", title="Throughput", xscale="log")
    right.set(xlabel="concurrent clients", ylabel="p99 latency (ms)", title="Tail latency", xscale="log", yscale="log")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()

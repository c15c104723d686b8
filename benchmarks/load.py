"""Load test: closed-loop clients against each endpoint, one item per request.

    python -m benchmarks.load                      # starts `bentoml serve` on models/
    python -m benchmarks.load --url http://host:3000 --clients 1,8,32 --seconds 30

For every endpoint and client count: requests/s, p50/p99 latency, 4xx/5xx, and
the mean number of requests BentoML's adaptive batcher merged into one call (read
from /metrics). Prints a table; writes benchmarks/results/load.md and load.png.
The load comes from `hey` (apt-get install hey) when it is installed, else from an
async httpx client. Both run on the same machine as the server and take CPU from it:
on a 2-core box the httpx client costs more than the server's work for the small
models, so prefer hey. (wrk was tried first and dropped: Debian's wrk 4.1.0 reported
latency percentiles that cannot be true, e.g. a mean of 28 ms at 1,165 requests/s over
one connection, and a p99 of 414 ms where hey and a sequential client measured 4 ms.)
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

from benchmarks.report import figure

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

    def counts(self) -> tuple[int, int, int]:
        """(requests answered, of which 4xx, of which 5xx)."""
        return (
            sum(self.codes.values()),
            sum(n for c, n in self.codes.items() if 400 <= c < 500),
            sum(n for c, n in self.codes.items() if c >= 500),
        )

    def row(self) -> str:
        p50, p99 = self.p50_p99()
        total, c4, c5 = self.counts()
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


def requests_per_batch(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]], endpoint: str) -> float:
    """Mean requests merged into one call between two /metrics readings (sum and count of the batch-size histogram)."""
    s0, c0 = before.get(endpoint, (0.0, 0.0))
    s1, c1 = after.get(endpoint, (0.0, 0.0))
    return (s1 - s0) / (c1 - c0) if c1 > c0 else float("nan")


async def run_load(url: str, endpoint: str, clients: int, seconds: float, make: Callable[[int], dict], path: str | None = None) -> Run:
    """`path` (default: the endpoint) is where requests go; `endpoint` labels the run (benchmarks/v2_load.py runs several per path)."""
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
                    response = await client.post(f"/{path or endpoint}", **make(i))
                except httpx.HTTPError:
                    run.transport_errors += 1
                    continue
                run.codes[response.status_code] = run.codes.get(response.status_code, 0) + 1
                if response.status_code == 200:
                    run.latencies.append(time.perf_counter() - start)
                i += clients

        await asyncio.gather(*(worker(k) for k in range(clients)))
        after = await batch_counters(client)
    run.requests_per_batch = requests_per_batch(before, after, endpoint)
    return run


HEY_STATUS = re.compile(r"^\s*\[(\d+)\]\s+(\d+) responses", re.M)
HEY_ERRORS = re.compile(r"^\s*\[(\d+)\]\s+(?!\d+ responses)", re.M)
HEY_PERCENTILE = re.compile(r"^\s*(\d+)% in ([0-9.]+) secs", re.M)


def request_body(endpoint: str, make: Callable[[int], dict]) -> tuple[str, bytes, dict[str, str]]:
    """One fixed request (content type, body bytes, other headers it sets), built by httpx so it is exactly what a client sends."""
    args = make(0)
    request = httpx.Request("POST", f"http://localhost/{endpoint}", **args)
    extra = {k: v for k, v in args.get("headers", {}).items() if k.lower() != "content-type"}
    return request.headers["content-type"], request.read(), extra


def parse_hey(run: Run, report: str) -> None:
    """Status codes, transport errors and p50/p99 from hey's summary (its percentiles cover every request)."""
    run.codes = {int(code): int(n) for code, n in HEY_STATUS.findall(report)}
    errors_part = report.partition("Error distribution:")[2]
    run.transport_errors = sum(int(n) for n in HEY_ERRORS.findall(errors_part))
    percentiles = {int(p): float(s) * 1000 for p, s in HEY_PERCENTILE.findall(report)}
    run.percentiles_ms = (percentiles.get(50, float("nan")), percentiles.get(99, float("nan")))


async def run_hey(url: str, endpoint: str, clients: int, seconds: float, make: Callable[[int], dict], path: str | None = None) -> Run:
    content_type, body, extra = request_body(path or endpoint, make)
    run = Run(endpoint, clients, seconds)
    with tempfile.NamedTemporaryFile("wb", suffix=".body", delete=False) as handle:
        handle.write(body)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        before = await batch_counters(client)
        command = [
            "hey",
            "-z",
            f"{seconds:.0f}s",
            "-c",
            str(clients),
            "-t",
            "120",
            "-m",
            "POST",
            "-T",
            content_type,
            "-D",
            handle.name,
            *[arg for name, value in extra.items() for arg in ("-H", f"{name}: {value}")],
            f"{url}/{path or endpoint}",
        ]
        result = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, check=True)
        after = await batch_counters(client)
    Path(handle.name).unlink()
    parse_hey(run, result.stdout)
    run.requests_per_batch = requests_per_batch(before, after, endpoint)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running service (default: start one on --models)")
    parser.add_argument("--models", default=str(ROOT / "models"))
    parser.add_argument("--clients", default="1,8,32,1", help="client counts in order; the last 1 shows latency after the burst")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--endpoints", default="classify_image,sentiment,predict_price")
    parser.add_argument("--out", default="load", help="results file stem under benchmarks/results/")
    parser.add_argument("--client", choices=["hey", "httpx"], default="hey" if shutil.which("hey") else "httpx")
    args = parser.parse_args()

    server = None
    url = args.url
    if url is None:
        from benchmarks.launch import start_server

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
                runner = run_hey if args.client == "hey" else run_load
                runs.append(asyncio.run(runner(url, endpoint, clients, args.seconds, makers[endpoint])))
                print(runs[-1].row(), flush=True)
    finally:
        if server is not None:
            server.stop()
    RESULTS.mkdir(exist_ok=True)
    table = "\n".join(header + [r.row() for r in runs])
    note = (
        f"{args.seconds:.0f} s per row, one item per request, closed loop, client: {args.client} on the same machine. "
        "A client count that comes again (the last 1) runs right after the burst before it."
    )
    (RESULTS / f"{args.out}.md").write_text(f"# Load test\n\n{note}\n\n{table}\n")
    _plot(runs, RESULTS / f"{args.out}.png")


def _plot(runs: list[Run], path: Path) -> None:
    with figure(path, 1, 2, size=(11, 4)) as (_, axes):
        left, right = axes[0]
        for endpoint in dict.fromkeys(r.endpoint for r in runs):
            first: list[Run] = []
            again: list[Run] = []  # a client count seen before: the idle run after the burst
            for r in (r for r in runs if r.endpoint == endpoint):
                (again if any(f.clients == r.clients for f in first) else first).append(r)
            color = None
            for group, style, label in ((first, "o-", endpoint), (again, "x", f"{endpoint}, after the burst")):
                if group:
                    x = [r.clients for r in group]
                    color = left.plot(x, [sum(r.codes.values()) / r.seconds for r in group], style, color=color, label=label)[0].get_color()
                    right.plot(x, [r.p50_p99()[1] for r in group], style, color=color, label=label)
        left.set(xlabel="concurrent clients", ylabel="requests/s", title="Throughput", xscale="log")
        right.set(xlabel="concurrent clients", ylabel="p99 latency (ms)", title="Tail latency", xscale="log", yscale="log")


if __name__ == "__main__":
    main()

"""Our service next to the peers a user would pick instead, on the same models and inputs, in one run.

    python -m benchmarks.compare [--rounds 2] [--seconds 15] [--clients 1,8,32]

Peers (benchmarks/peers/): a stock BentoML 1.4 service (batchable APIs, default settings)
and a plain FastAPI app calling onnxruntime per request, under uvicorn with one worker
per core as ours runs; they run model.onnx with the project's preprocessing, and
"FastAPI + onnxruntime INT8" runs the image model's INT8 variant, the file ours runs. Ours runs twice: as shipped (on this CPU the image model's checked
INT8 variant) and as "modelserve fp32" (MODELSERVE_INT8=false, the very files the peers run). Each is started in turn and driven by hey at each client
count with one real item per request (a photo from ../shared/data, else the test fixture;
a real review). Rounds alternate the order of the servers. The raw onnxruntime session's
img/s on pre-decoded photos (the ceiling on these cores) is measured in the same run.
Prints a table; writes benchmarks/results/compare.md and compare.png.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import onnxruntime as ort

from benchmarks.launch import BENTOML, ROOT, Server, free_port, start_process, start_server
from benchmarks.load import RESULTS, SHARED, Run, payloads, run_hey
from benchmarks.report import figure
from service.core.preprocessing import ImageSpec, decode_image
from service.core.registry import Registry

MODELS = ROOT / "models"
ENDPOINTS = ("classify_image", "sentiment")
RAW_SECONDS = 5.0


def start_peer(name: str, log: Path) -> Server:
    port = free_port()
    env = os.environ | {"MODELSERVE_MODEL_ROOT": str(MODELS), "BENTOML_HOME": str(log.parent / "bentoml_home")}
    env["PEER_INT8"] = "1" if name.endswith("INT8") else ""
    if name == "stock BentoML":
        command = [str(BENTOML), "serve", "benchmarks.peers.stock_bentoml:Stock", "--host", "127.0.0.1", "--port", str(port)]
    else:
        uvicorn = Path(sys.executable).with_name("uvicorn")
        command = [str(uvicorn), "benchmarks.peers.fastapi_ort:app", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
        command += ["--workers", str(len(os.sched_getaffinity(0)))]
    return start_process(command, f"http://127.0.0.1:{port}", log, env=env)


def start(name: str, work: Path) -> Server:
    """modelserve as shipped (INT8 image model on this CPU), "modelserve fp32" (MODELSERVE_INT8=false, the peers' file), or a peer."""
    log = work / f"{name.replace(' ', '_')}.log"
    if name.startswith("modelserve"):
        return start_server(MODELS, log, MODELSERVE_INT8=str(name == "modelserve").lower())
    return start_peer(name, log)


def raw_session_rate(int8: bool) -> tuple[float, str]:
    """Best images/s of a bare onnxruntime session on pre-decoded photos at batch 1 (the ceiling here), on model.onnx or its INT8 variant."""
    version = Registry(MODELS).current("image_classifier")
    path = version.variant_path(version.verify(), "int8") if int8 else version.model_path
    spec = ImageSpec.from_json(version.read_metadata()["preprocessing"])
    photos = sorted((SHARED / "cats_vs_dogs_small" / "test").rglob("*.jpg"))[:64] or [ROOT / "tests" / "fixtures" / "cat.jpg"]
    pixels = [decode_image(p.read_bytes(), spec)[None] for p in photos]
    best = (0.0, "")
    cores = len(os.sched_getaffinity(0))
    for threads, concurrent in ((0, 1), (1, cores), (0, cores)):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        session.run(None, {"image": pixels[0]})
        done, deadline = 0, time.perf_counter() + RAW_SECONDS

        def loop(offset: int, session: ort.InferenceSession = session, deadline: float = deadline) -> int:
            n = 0
            while time.perf_counter() < deadline:
                session.run(None, {"image": pixels[(offset + n) % len(pixels)]})
                n += 1
            return n

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrent) as pool:
            done = sum(pool.map(loop, range(concurrent)))
        rate = done / (time.perf_counter() - started)
        if rate > best[0]:
            best = (rate, f"{concurrent} concurrent run(s) x {threads or 'all'} intra-op threads")
    return best


def row(server: str, round_: int, run: Run) -> str:
    p50, p99 = run.p50_p99()
    total = sum(run.codes.values())
    bad = total - run.codes.get(200, 0) + run.transport_errors
    return f"| {server} | {round_} | {run.endpoint} | {run.clients} | {total / run.seconds:,.0f} | {p50:,.1f} | {p99:,.1f} | {bad} |"


def measure(args: argparse.Namespace, work: Path, report: Callable[[str], None]) -> list[tuple[str, int, Run]]:
    makers = payloads()
    servers = args.servers.split(",")
    results = []
    for round_ in range(1, args.rounds + 1):
        for name in servers if round_ % 2 else list(reversed(servers)):
            server = start(name, work)
            try:
                for endpoint in args.endpoints.split(","):
                    if endpoint == "sentiment" and name.endswith("INT8"):
                        continue  # the same text file as its fp32 twin
                    for clients in map(int, args.clients.split(",")):
                        run = asyncio.run(run_hey(server.url, endpoint, clients, args.seconds, makers[endpoint]))
                        results.append((name, round_, run))
                        report(row(name, round_, run))
            finally:
                server.stop()
    return results


def plot(results: list[tuple[str, int, Run]], raw: dict[str, float], path: Path) -> None:
    with figure(path, 2, len(ENDPOINTS), size=(11, 8)) as (_, axes):
        for column, endpoint in enumerate(ENDPOINTS):
            top, bottom = axes[0][column], axes[1][column]
            for server in dict.fromkeys(s for s, _, _ in results):
                runs = [(r, run) for s, r, run in results if s == server and run.endpoint == endpoint]
                for round_ in sorted({r for r, _ in runs}):
                    chosen = [run for r, run in runs if r == round_]
                    x, label = [run.clients for run in chosen], f"{server} ({round_})"
                    line = top.plot(x, [sum(run.codes.values()) / run.seconds for run in chosen], "o-", label=label)[0]
                    bottom.plot(x, [run.p50_p99()[1] for run in chosen], "o-", color=line.get_color(), label=label)
            if endpoint == "classify_image":
                for (label, rate), style in zip(raw.items(), ("--", ":"), strict=True):
                    top.axhline(rate, color="grey", linestyle=style, label=f"raw session, pre-decoded, {label}")
            top.set(title=f"/{endpoint}: throughput", xlabel="clients", ylabel="requests/s", xscale="log")
            bottom.set(title=f"/{endpoint}: p99 latency", xlabel="clients", ylabel="ms", xscale="log", yscale="log")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--servers", default="modelserve,modelserve fp32,stock BentoML,FastAPI + onnxruntime,FastAPI + onnxruntime INT8")
    parser.add_argument("--endpoints", default=",".join(ENDPOINTS))
    parser.add_argument("--out", default="compare", help="results file stem under benchmarks/results/")
    args = parser.parse_args()
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"compare-{os.getpid()}"
    work.mkdir(parents=True)
    raw = {label: raw_session_rate(label == "int8") for label in ("fp32", "int8")}
    lines = [
        *[f"Raw onnxruntime session, pre-decoded photos, batch 1, {k}: {rate:,.0f} img/s ({config})." for k, (rate, config) in raw.items()],
        "",
        "| server | round | endpoint | clients | req/s | p50 ms | p99 ms | non-200 |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)

    def report(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    results = measure(args, work, report)
    note = f"{args.seconds:.0f} s per row, one item per request, hey on the same machine ({len(os.sched_getaffinity(0))} cores); rounds alternate the order."
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.md").write_text("# Our service and its peers, one run\n\n" + note + "\n\n" + "\n".join(lines) + "\n")
    plot(results, {k: rate for k, (rate, _) in raw.items()}, RESULTS / f"{args.out}.png")


if __name__ == "__main__":
    main()

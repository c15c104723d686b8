"""The Open Inference Protocol over gRPC against REST, the same photo and review, one server, one run.

    python -m benchmarks.grpc_load                       # starts `bentoml serve` on models/ with gRPC on
    python -m benchmarks.grpc_load --seconds 4 --streams 1,8 --models imdb_sentiment

One item per request, closed loop, at each count of concurrent streams (every variant at one
count before the next), through:

- gRPC (ModelInfer): the JPEG's bytes as BYTES, the pixels as UINT8 (decoded beforehand by the
  client with the service's own decoder), both in raw_input_contents as Triton's client sends
  them; the pixels as typed uint_contents too; the review as BYTES;
- REST, the Open Inference Protocol with Triton's binary tensor data (the JPEG's bytes, the pixels,
  the review), bodies made by tritonclient as in benchmarks/v2_load.py;
- the friendly endpoints: multipart JPEG (/classify_image), JSON (/sentiment).

REST load comes from hey (one connection per client); gRPC load from grpc.aio in this process,
one channel (one HTTP/2 connection) per stream, as hey's clients, so that the kernel spreads
both over the workers sharing each port; each gRPC request is serialized once and sent as
bytes, as hey sends one body. Server CPU per item is the server processes' user + system time
(steadier than wall time on a shared machine); client CPU is hey's or this process's.
Prints a table; writes benchmarks/results/grpc_load.md and grpc_load.png.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import numpy as np

from benchmarks.load import RESULTS, ROOT, Run, run_hey
from benchmarks.report import figure
from benchmarks.v2_load import PHOTO, REVIEW, server_cpu_s, v2_request
from service.core.preprocessing import ImageSpec, decode_image
from service.grpc import inference_pb2 as pb

INFER = "/inference.GRPCInferenceService/ModelInfer"
# gRPC codes as the HTTP statuses REST answers for the same fault, so that both count 4xx and 5xx alike.
AS_HTTP = {grpc.StatusCode.OK: 200, grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404}
AS_HTTP |= {grpc.StatusCode.RESOURCE_EXHAUSTED: 503, grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504}
MAX_MESSAGE = 64 * 2**20


@dataclass(frozen=True)
class Variant:
    model: str
    route: str  # "gRPC", "REST v2 binary", "friendly"
    sends: str
    http: tuple[str, dict] | None = None  # (path, httpx keyword arguments)
    message: bytes = b""  # a serialized ModelInferRequest (gRPC)

    @property
    def label(self) -> str:
        return f"{self.model} | {self.route} | {self.sends}"

    def body_bytes(self) -> int:
        if self.http is None:
            return len(self.message)
        path, request = self.http
        return len(httpx.Request("POST", f"http://localhost/{path}", **request).read())


def grpc_message(model: str, name: str, datatype: str, array: np.ndarray, raw: bool) -> bytes:
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name=name, datatype=datatype, shape=array.shape)
    if raw and datatype == "BYTES":
        request.raw_input_contents.append(b"".join(struct.pack("<I", len(e)) + e for e in array.reshape(-1)))
    elif raw:
        request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    else:
        tensor.contents.uint_contents.extend(array.reshape(-1).tolist())
    return request.SerializeToString()


def variants(photo: Path, spec: ImageSpec) -> list[Variant]:
    jpeg = photo.read_bytes()
    pixels = decode_image(jpeg, spec)[np.newaxis]
    jpegs, review = np.array([jpeg], dtype=object), np.array([REVIEW.encode()], dtype=object)
    image, text = "v2/models/image_classifier/infer", "v2/models/imdb_sentiment/infer"
    return [
        Variant("image_classifier", "gRPC", "raw BYTES JPEG", message=grpc_message("image_classifier", "images", "BYTES", jpegs, True)),
        Variant("image_classifier", "gRPC", "raw UINT8 pixels", message=grpc_message("image_classifier", "pixels", "UINT8", pixels, True)),
        Variant("image_classifier", "gRPC", "typed UINT8 pixels", message=grpc_message("image_classifier", "pixels", "UINT8", pixels, False)),
        Variant("image_classifier", "REST v2 binary", "JPEG bytes", http=(image, v2_request("images", jpegs, "BYTES", True))),
        Variant("image_classifier", "REST v2 binary", "UINT8 pixels", http=(image, v2_request("pixels", pixels, "UINT8", True))),
        Variant("image_classifier", "friendly", "multipart JPEG", http=("classify_image", {"files": [("images", ("photo.jpg", jpeg, "image/jpeg"))]})),
        Variant("imdb_sentiment", "gRPC", "raw BYTES text", message=grpc_message("imdb_sentiment", "texts", "BYTES", review, True)),
        Variant("imdb_sentiment", "REST v2 binary", "BYTES text", http=(text, v2_request("texts", review, "BYTES", True))),
        Variant("imdb_sentiment", "friendly", "JSON text", http=("sentiment", {"json": {"texts": [REVIEW]}})),
    ]  # fmt: skip


@dataclass
class Result:
    variant: Variant
    run: Run
    server_cpu_ms: float
    client_cpu_ms: float
    errors: dict[str, int] = field(default_factory=dict)

    def items_per_s(self) -> float:
        return self.run.codes.get(200, 0) / self.run.seconds

    def row(self) -> str:
        run, variant = self.run, self.variant
        p50, p99 = run.p50_p99()
        _, c4, c5 = run.counts()
        return (f"| {variant.model} | {variant.route} | {variant.sends} | {variant.body_bytes():,} | {run.clients} | "
                f"{self.items_per_s():,.1f} | {p50:,.1f} | {p99:,.1f} | {self.server_cpu_ms:.2f} | {self.client_cpu_ms:.2f} | "
                f"{c4} | {c5} | {run.transport_errors} |")  # fmt: skip


HEADER = [
    "| model | route | sends | bytes | streams | items/s | p50 ms | p99 ms | server CPU ms/item | client CPU ms/item | 4xx | 5xx | transport errors |",
    "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
]


async def run_grpc(address: str, label: str, streams: int, seconds: float, message: bytes) -> Run:
    """`streams` closed loops, each on a channel (connection) of its own, sending the same serialized request."""
    run = Run(label, streams, seconds)
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", MAX_MESSAGE)]
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(streams)]
    calls = [c.unary_unary(INFER, request_serializer=None, response_deserializer=None) for c in channels]
    await asyncio.gather(*(call(message, timeout=120) for call in calls))  # connected and warm before the clock starts
    deadline = time.perf_counter() + seconds

    async def stream(call: grpc.aio.UnaryUnaryMultiCallable) -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                await call(message, timeout=120)
                code = 200
            except grpc.aio.AioRpcError as exc:
                code = AS_HTTP.get(exc.code(), 500)
            run.codes[code] = run.codes.get(code, 0) + 1
            if code == 200:
                run.latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(stream(call) for call in calls))
    await asyncio.gather(*(c.close() for c in channels))
    return run


def check_answers(url: str, address: str, chosen: list[Variant]) -> None:
    """Every variant answers before it is timed (a benchmark of errors would measure nothing)."""
    with httpx.Client(base_url=url, timeout=60) as client, grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(INFER, request_serializer=None, response_deserializer=pb.ModelInferResponse.FromString)
        for variant in chosen:
            if variant.http is not None:
                response = client.post(f"/{variant.http[0]}", **variant.http[1])
                if response.status_code != 200:
                    raise SystemExit(f"{variant.label}: {response.status_code} {response.text[:300]}")
            elif not call(variant.message, timeout=60).outputs:
                raise SystemExit(f"{variant.label}: no outputs")


def measure(variant: Variant, url: str, address: str, streams: int, seconds: float, pid: int | None) -> Result:
    server_before, self_before = server_cpu_s(pid), resource.getrusage(resource.RUSAGE_SELF)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)  # hey, once it has exited (the server has not)
    if variant.http is None:
        run = asyncio.run(run_grpc(address, variant.label, streams, seconds, variant.message))
        after, before = resource.getrusage(resource.RUSAGE_SELF), self_before
    else:
        path, request = variant.http
        run = asyncio.run(run_hey(url, variant.label, streams, seconds, lambda i: request, path))
        after, before = resource.getrusage(resource.RUSAGE_CHILDREN), children_before
    answered = max(1, sum(run.codes.values()))
    client_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return Result(variant, run, (server_cpu_s(pid) - server_before) * 1000 / answered, client_s * 1000 / answered)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-root", default=str(ROOT / "models"))
    parser.add_argument("--models", default="image_classifier,imdb_sentiment")
    parser.add_argument("--streams", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", default="grpc_load", help="results file stem under benchmarks/results/")
    args = parser.parse_args()
    from benchmarks.launch import start_server

    server = start_server(Path(args.models_root), Path(tempfile.mkdtemp()) / "server.log", grpc=True)
    assert server.grpc_address is not None
    print("\n".join(HEADER), flush=True)
    results: list[Result] = []
    try:
        served = {m["name"]: m for m in httpx.get(f"{server.url}/models", timeout=60).json()["models"]}
        spec = ImageSpec.from_json(served["image_classifier"]["preprocessing"])
        photo = PHOTO if PHOTO.is_file() else ROOT / "tests" / "fixtures" / "cat.jpg"
        chosen = [v for v in variants(photo, spec) if v.model in args.models.split(",")]
        check_answers(server.url, server.grpc_address, chosen)
        # Stream counts outside, variants inside: load from elsewhere that comes and goes hits every variant alike.
        for streams in (int(s) for s in args.streams.split(",")):
            for variant in chosen:
                results.append(measure(variant, server.url, server.grpc_address, streams, args.seconds, server.process.pid))
                print(results[-1].row(), flush=True)
        results.sort(key=lambda r: (chosen.index(r.variant), r.run.clients))
    finally:
        server.stop()
    write(results, args)


def write(results: list[Result], args: argparse.Namespace) -> None:
    RESULTS.mkdir(exist_ok=True)
    note = (
        f"{args.seconds:g} s per row, one item per request (the same photo or review every time), closed loop, clients on "
        "the same machine as the server (hey for REST, grpc.aio in the benchmark's process for gRPC, a connection per "
        "stream). `bytes`: one request body or message. Server CPU: user + system time of the server's processes per item; "
        "client CPU: hey's or the benchmark process's. Command: "
        f"`python -m benchmarks.grpc_load --seconds {args.seconds:g} --streams {args.streams} --models {args.models}`."
    )
    table = "\n".join(HEADER + [r.row() for r in results])
    (RESULTS / f"{args.out}.md").write_text(f"# Open Inference Protocol over gRPC vs REST\n\n{note}\n\n{table}\n")
    _plot(results, RESULTS / f"{args.out}.png")


def _plot(results: list[Result], path: Path) -> None:
    models = list(dict.fromkeys(r.variant.model for r in results))
    with figure(path, 2, len(models), size=(6 * len(models), 7.5)) as (_, axes):
        for column, model in enumerate(models):
            top, bottom = axes[0][column], axes[1][column]
            for variant in {r.variant.label: r.variant for r in results if r.variant.model == model}.values():
                mine = [r for r in results if r.variant.label == variant.label]
                label, streams = f"{variant.route}: {variant.sends}", [r.run.clients for r in mine]
                style = "o-" if variant.route == "gRPC" else "s--"
                top.plot(streams, [r.items_per_s() for r in mine], style, label=label)
                bottom.plot(streams, [r.run.p50_p99()[1] for r in mine], style, label=label)
            unit = "images/s" if model == "image_classifier" else "texts/s"
            top.set(title=model, ylabel=unit, xscale="log")
            bottom.set(xlabel="concurrent streams", ylabel="p99 latency, ms", xscale="log")
            counts = sorted({r.run.clients for r in results})
            for ax in (top, bottom):
                ax.set_xticks(counts, [str(c) for c in counts])
                ax.minorticks_off()


if __name__ == "__main__":
    main()

"""The friendly API against the Open Inference Protocol (KServe v2), the same inputs, one server, one run.

    python -m benchmarks.v2_load                                # starts `bentoml serve` on models/
    python -m benchmarks.v2_load --seconds 5 --models image_classifier --url http://host:3000

One input per model (a photo, a review, a house), sent one per request, closed loop, at each
client count (every variant at one count before the next count), through:

- the friendly endpoint: multipart JPEG (/classify_image), JSON (/sentiment, /predict_price);
- v2 JSON: the image as base64 BYTES or its pixels as UINT8 numbers, the text, the row as FP32;
- v2 binary (Triton's binary tensor data, as tritonclient sends it): the JPEG's bytes, or its
  pixels decoded beforehand by the client with the service's own decoder, the text, the row.

v2 request bodies are made by tritonclient (`generate_request_body`), so they are what that
client sends; binary requests ask for binary outputs, as tritonclient does by default. The
load comes from hey when installed, else from httpx (benchmarks/load.py). Prints a table;
writes benchmarks/results/v2_load.md and v2_load.png.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import tritonclient.http as triton

from benchmarks.load import HOUSE, RESULTS, ROOT, SHARED, Run, run_hey, run_load
from benchmarks.report import figure
from service.core.preprocessing import ImageSpec, decode_image

PHOTO = SHARED / "cats_vs_dogs_small" / "test" / "cats" / "cat.4501.jpg"
REVIEW = "One of the best films I have seen in years: moving, funny and beautifully acted. I loved it, and so did everyone with me."


@dataclass(frozen=True)
class Variant:
    model: str
    route: str  # "friendly", "v2 JSON", "v2 binary"
    sends: str  # what one request carries
    path: str
    request: dict  # httpx keyword arguments (content/files/json, headers)

    @property
    def label(self) -> str:
        return f"{self.model} | {self.route} | {self.sends}"

    def body_bytes(self) -> int:
        return len(httpx.Request("POST", f"http://localhost/{self.path}", **self.request).read())


def v2_request(name: str, array: np.ndarray, datatype: str, binary: bool) -> dict:
    """httpx arguments for the body tritonclient would send: JSON, or JSON + binary tensor data (and binary outputs)."""
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    body, json_size = triton.InferenceServerClient.generate_request_body([tensor], outputs=None if binary else [])
    if not binary:
        body = json.dumps({"inputs": json.loads(body)["inputs"]}).encode()  # JSON outputs: no binary_data_output
    headers = {"content-type": "application/octet-stream" if json_size else "application/json"}
    if json_size:
        headers["Inference-Header-Content-Length"] = str(json_size)
    return {"content": body, "headers": headers}


def variants(photo: Path, spec: ImageSpec) -> list[Variant]:
    """Every way to send the same three inputs; pixels decoded as the served version decodes (`spec`, from GET /models)."""
    jpeg = photo.read_bytes()
    pixels = decode_image(jpeg, spec)[np.newaxis]
    image, text, house = "v2/models/image_classifier/infer", "v2/models/imdb_sentiment/infer", "v2/models/boston_housing/infer"
    row = np.array([HOUSE], dtype=np.float32)
    review = np.array([REVIEW.encode()], dtype=object)
    return [
        Variant("image_classifier", "friendly", "multipart JPEG", "classify_image", {"files": [("images", ("photo.jpg", jpeg, "image/jpeg"))]}),
        Variant("image_classifier", "v2 JSON", "base64 JPEG", image, v2_request("images", np.array([base64.b64encode(jpeg)], dtype=object), "BYTES", False)),
        Variant("image_classifier", "v2 binary", "JPEG bytes", image, v2_request("images", np.array([jpeg], dtype=object), "BYTES", True)),
        Variant("image_classifier", "v2 JSON", "UINT8 pixels", image, v2_request("pixels", pixels, "UINT8", False)),
        Variant("image_classifier", "v2 binary", "UINT8 pixels", image, v2_request("pixels", pixels, "UINT8", True)),
        Variant("imdb_sentiment", "friendly", "JSON text", "sentiment", {"json": {"texts": [REVIEW]}}),
        Variant("imdb_sentiment", "v2 JSON", "BYTES text", text, v2_request("texts", review, "BYTES", False)),
        Variant("imdb_sentiment", "v2 binary", "BYTES text", text, v2_request("texts", review, "BYTES", True)),
        Variant("boston_housing", "friendly", "JSON row", "predict_price", {"json": {"rows": row.tolist()}}),
        Variant("boston_housing", "v2 JSON", "FP32 [1,13]", house, v2_request("rows", row, "FP32", False)),
        Variant("boston_housing", "v2 binary", "FP32 [1,13]", house, v2_request("rows", row, "FP32", True)),
    ]  # fmt: skip


HEADER = [
    "| model | route | sends | bytes | clients | req/s | p50 ms | p99 ms | server CPU ms/req | 4xx | 5xx | transport errors |",
    "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
]


@dataclass(frozen=True)
class Result:
    variant: Variant
    run: Run
    cpu_ms: float  # CPU time of the server's processes per request: steadier than wall time on a shared machine

    def row(self) -> str:
        run, variant = self.run, self.variant
        p50, p99 = run.p50_p99()
        total, c4, c5 = run.counts()
        return (f"| {variant.model} | {variant.route} | {variant.sends} | {variant.body_bytes():,} | {run.clients} | "
                f"{total / run.seconds:,.1f} | {p50:,.1f} | {p99:,.1f} | {self.cpu_ms:.2f} | {c4} | {c5} | {run.transport_errors} |")  # fmt: skip


def server_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of the server process and its workers so far (nan for a server we did not start)."""
    if pid is None:
        return float("nan")
    import psutil

    processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return sum(sum(p.cpu_times()[:2]) for p in processes)


def check_answers(url: str, chosen: list[Variant]) -> None:
    """Every variant answers 200 before it is timed (a benchmark of 400s would measure nothing)."""
    with httpx.Client(base_url=url, timeout=60) as client:
        for variant in chosen:
            response = client.post(f"/{variant.path}", **variant.request)
            if response.status_code != 200:
                raise SystemExit(f"{variant.label}: {response.status_code} {response.text[:300]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running service (default: start one on --models-root)")
    parser.add_argument("--models-root", default=str(ROOT / "models"))
    parser.add_argument("--models", default="image_classifier,imdb_sentiment,boston_housing")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--out", default="v2_load", help="results file stem under benchmarks/results/")
    parser.add_argument("--client", choices=["hey", "httpx"], default="hey" if shutil.which("hey") else "httpx")
    args = parser.parse_args()
    server, url = None, args.url
    if url is None:
        from benchmarks.launch import start_server

        server = start_server(Path(args.models_root), Path(tempfile.mkdtemp()) / "server.log")
        url = server.url
    print("\n".join(HEADER), flush=True)
    results: list[Result] = []
    pid = server.process.pid if server is not None else None
    try:
        served = {m["name"]: m for m in httpx.get(f"{url}/models", timeout=60).json()["models"]}
        spec = ImageSpec.from_json(served["image_classifier"]["preprocessing"])
        photo = PHOTO if PHOTO.is_file() else ROOT / "tests" / "fixtures" / "cat.jpg"
        chosen = [v for v in variants(photo, spec) if v.model in args.models.split(",")]
        check_answers(url, chosen)
        runner: Callable = run_hey if args.client == "hey" else run_load
        # Client counts outside, variants inside: on a shared machine, load from elsewhere that comes and
        # goes then hits every variant of a row group alike instead of one variant's whole series.
        for clients in (int(c) for c in args.clients.split(",")):
            for variant in chosen:
                make = lambda i, v=variant: v.request  # noqa: E731 - the same input every time
                before = server_cpu_s(pid)
                run = asyncio.run(runner(url, variant.label, clients, args.seconds, make, variant.path))
                results.append(Result(variant, run, (server_cpu_s(pid) - before) * 1000 / max(1, sum(run.codes.values()))))
                print(results[-1].row(), flush=True)
        results.sort(key=lambda r: (chosen.index(r.variant), r.run.clients))
    finally:
        if server is not None:
            server.stop()
    write(results, args)


def write(results: list[Result], args: argparse.Namespace) -> None:
    RESULTS.mkdir(exist_ok=True)
    note = (
        f"{args.seconds:g} s per row, one item per request (the same input every time), closed loop, client: {args.client} "
        "on the same machine as the server. `bytes`: one request body; server CPU: user + system time of the server's "
        "processes per request (hey's own CPU not included). Command: "
        f"`python -m benchmarks.v2_load --seconds {args.seconds:g} --clients {args.clients} --models {args.models}`."
    )
    table = "\n".join(HEADER + [r.row() for r in results])
    (RESULTS / f"{args.out}.md").write_text(f"# Friendly API vs Open Inference Protocol (v2)\n\n{note}\n\n{table}\n")
    _plot(results, RESULTS / f"{args.out}.png")


def _plot(results: list[Result], path: Path) -> None:
    models = list(dict.fromkeys(r.variant.model for r in results))
    with figure(path, 2, len(models), size=(5.5 * len(models), 7)) as (_, axes):
        for column, model in enumerate(models):
            top, bottom = axes[0][column], axes[1][column]
            for variant in {r.variant.label: r.variant for r in results if r.variant.model == model}.values():
                mine = [r for r in results if r.variant.label == variant.label]
                label, clients = f"{variant.route}: {variant.sends}", [r.run.clients for r in mine]
                top.plot(clients, [sum(r.run.codes.values()) / r.run.seconds for r in mine], "o-", label=label)
                bottom.plot(clients, [r.cpu_ms for r in mine], "o-", label=label)
            top.set(title=model, ylabel="requests/s", xscale="log")
            bottom.set(xlabel="concurrent clients", ylabel="server CPU ms per request", xscale="log")


if __name__ == "__main__":
    main()

"""fp32 vs INT8 image model on this CPU, in one run: the bare session at batch 1 and 8, and end to end through /classify_image.

    python -m benchmarks.int8 [--rounds 3] [--seconds 3] [--http-seconds 15] [--clients 1,32]

Both files of the served registry version (model.onnx, model.int8.onnx) run in onnxruntime's
CPU provider with the service's session options, on real photos (../shared/data's test
photos, else tests/fixtures), in alternating rounds; the median round is reported, so other
work on the machine weighs on both alike. End to end: the service started twice, with
MODELSERVE_INT8 on (the default) and off, each driven by hey with one photo per request.
Accuracy is the export check's, on the 1,000 test photos (metadata "variants"). Prints a
table; writes benchmarks/results/int8.md and int8.png.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.launch import ROOT, start_server
from benchmarks.load import RESULTS, SHARED, payloads, run_hey
from benchmarks.report import figure, save_markdown
from service.core.cpu import cpu_report
from service.core.preprocessing import ImageSpec, decode_image
from service.core.registry import ModelVersion, Registry
from service.core.runtime import load_model
from service.core.sessions import SessionConfig, open_session

MODEL = "image_classifier"
BATCHES = (1, 8)
MODELS = ROOT / "models"


def images_per_second(session: ort.InferenceSession, batch: np.ndarray, seconds: float) -> float:
    session.run(None, {"image": batch})  # warm
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds or done < 5 * len(batch):
        session.run(None, {"image": batch})
        done += len(batch)
    return done / elapsed


def session_rates(files: dict[str, Path], photos: np.ndarray, rounds: int, seconds: float) -> dict[tuple[str, int], float]:
    """Median img/s per (precision, batch) over alternating rounds; every core for the one call, as a request alone gets."""
    cpu = SessionConfig(("CPUExecutionProvider",))
    sessions = {label: open_session(path, cpu, "", len(os.sched_getaffinity(0)), spin=True) for label, path in files.items()}
    samples: dict[tuple[str, int], list[float]] = {}
    for round_ in range(rounds):
        for size in BATCHES:
            batch = np.ascontiguousarray(photos[np.arange(size) % len(photos)])
            for label in list(sessions) if round_ % 2 == 0 else reversed(list(sessions)):
                samples.setdefault((label, size), []).append(images_per_second(sessions[label], batch, seconds))
    return {key: statistics.median(values) for key, values in samples.items()}


def load_costs(version: ModelVersion, rounds: int) -> tuple[float, float, float, str]:
    """Median seconds to load the version with INT8 (reference check included) and without, the check's own share, and the file chosen."""
    with_int8, check, fp32, chosen = [], [], [], ""
    for _ in range(rounds):
        started = time.perf_counter()
        model = load_model(version, ["CPUExecutionProvider"])
        with_int8.append(time.perf_counter() - started)
        check.append((model.model_file.check or {}).get("seconds", float("nan")))
        chosen = model.model_file.summary()
        started = time.perf_counter()
        load_model(version, ["CPUExecutionProvider"], int8=False)
        fp32.append(time.perf_counter() - started)
    return statistics.median(with_int8), statistics.median(check), statistics.median(fp32), chosen


def http_rates(clients: list[int], seconds: float, work: Path) -> dict[tuple[str, int], tuple[float, float]]:
    """(req/s, p99 ms) per (precision, clients) through the real service."""
    results, photo = {}, payloads()["classify_image"]  # read the photos once
    for label, setting in (("int8", "true"), ("fp32", "false")):
        server = start_server(MODELS, work / f"serve-{label}.log", MODELSERVE_INT8=setting)
        try:
            for n in clients:
                run = asyncio.run(run_hey(server.url, "classify_image", n, seconds, photo))
                ok = run.codes.get(200, 0)
                assert ok == sum(run.codes.values()) and not run.transport_errors, run.codes
                results[(label, n)] = (ok / run.seconds, run.p50_p99()[1])
        finally:
            server.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="per session measurement")
    parser.add_argument("--http-seconds", type=float, default=15.0, help="per end-to-end measurement")
    parser.add_argument("--clients", default="1,32")
    args = parser.parse_args()
    version = Registry(MODELS).current(MODEL)
    metadata = version.verify()
    int8 = metadata.get("variants", {}).get("int8", {})
    if not int8.get("written"):
        raise SystemExit(f"{MODEL} v{version.version} has no INT8 variant that passed its check")
    spec = ImageSpec.from_json(metadata["preprocessing"])
    paths = sorted((SHARED / "cats_vs_dogs_small" / "test").rglob("*.jpg"))[:16] or sorted((ROOT / "tests" / "fixtures").glob("*.jpg"))
    photos = np.stack([decode_image(p.read_bytes(), spec) for p in paths])
    files = {"fp32": version.model_path, "int8": version.path / int8["file"]}
    load_before = os.getloadavg()[0]
    loading = load_costs(version, max(3, args.rounds))
    rates = session_rates(files, photos, args.rounds, args.seconds)
    clients = [int(c) for c in args.clients.split(",")]
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"int8-{os.getpid()}"
    work.mkdir(parents=True)
    served = http_rates(clients, args.http_seconds, work)
    lines = report(version.version, int8["check"], files, rates, served, clients, args, load_before)
    lines += [
        "",
        f"Loading v{version.version} on this CPU (median of {max(3, args.rounds)}): {loading[0]:.2f} s with INT8, of which "
        f"{loading[1]:.2f} s the reference check ({int8['reference']['samples']} inputs: read, checksum, run, compare); "
        f"{loading[2]:.2f} s with MODELSERVE_INT8=false. It runs {loading[3]}.",
    ]
    print("\n".join(lines))
    save_markdown(RESULTS / "int8.md", ["# fp32 vs INT8 image model on the CPU", "", "`python -m benchmarks.int8`", "", *lines])
    plot(rates, served, clients, RESULTS / "int8.png")


def report(
    version: int,
    check: dict,
    files: dict[str, Path],
    rates: dict[tuple[str, int], float],
    served: dict[tuple[str, int], tuple[float, float]],
    clients: list[int],
    args: argparse.Namespace,
    load_before: float,
) -> list[str]:
    accuracy = {"fp32": check["accuracy_fp32"], "int8": check["accuracy_int8"]}
    head = [f"session img/s batch {b}" for b in BATCHES] + [f"/classify_image req/s, {n} clients (p99 ms)" for n in clients]
    lines = ["| file | MB | test accuracy | " + " | ".join(head) + " |", "|---|---:|---:|" + "---:|" * len(head)]
    for label, path in files.items():
        cells = [f"{rates[(label, b)]:.0f}" for b in BATCHES] + [
            f"{served[(label, n)][0]:.0f} ({served[(label, n)][1]:.0f})" for n in clients
        ]
        lines.append(f"| {path.name} | {path.stat().st_size / 1e6:.1f} | {accuracy[label]:.4f} | " + " | ".join(cells) + " |")
    ratios = [f"session batch {b}: {rates[('int8', b)] / rates[('fp32', b)]:.2f}x" for b in BATCHES]
    ratios += [f"{n} clients: {served[('int8', n)][0] / served[('fp32', n)][0]:.2f}x" for n in clients]
    cpu = f"{cpu_report()['model']} (int8 kernels: {cpu_report()['int8_kernels']})"
    return [
        f"{MODEL} v{version}, onnxruntime {ort.__version__} CPUExecutionProvider on {cpu} with {len(os.sched_getaffinity(0))} cores; "
        f"session: median of {args.rounds} alternating rounds of {args.seconds:g} s; end to end: {args.http_seconds:g} s per row, hey on "
        f"the same machine; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after.",
        "",
        *lines,
        "",
        f"INT8 over fp32: {', '.join(ratios)}. Same label as fp32 on {check['label_agreement']:.1%} of {check['samples']} test photos; "
        f"accuracy {100 * (check['accuracy_int8'] - check['accuracy_fp32']):+.1f} points.",
    ]


def plot(rates: dict[tuple[str, int], float], served: dict[tuple[str, int], tuple[float, float]], clients: list[int], path: Path) -> None:
    with figure(path, 1, 2, size=(11, 4)) as (_, axes):
        for ax, keys, title, unit in (
            (axes[0][0], BATCHES, "bare session", "batch"),
            (axes[0][1], clients, "/classify_image end to end", "clients"),
        ):
            width = 0.38
            for i, label in enumerate(("fp32", "int8")):
                values = [rates[(label, k)] if unit == "batch" else served[(label, k)][0] for k in keys]
                drawn = ax.bar(np.arange(len(keys)) + (i - 0.5) * width, values, width, label=label)
                ax.bar_label(drawn, labels=[f"{v:.0f}" for v in values], padding=2, fontsize=8)
            ax.set_xticks(np.arange(len(keys)), [f"{unit} {k}" for k in keys])
            ax.set(title=f"image_classifier on the CPU: {title}", ylabel="images/s")


if __name__ == "__main__":
    main()

"""What a SIGTERM under load costs: requests answered, refused and reset around the signal.

    python -m benchmarks.drain [--clients 4 32] [--workers 1] [--rounds 2]

Starts `bentoml serve` on the shipped models, runs N clients that post /predict_price in
a loop, each on a new connection (as a client behind no balancer does), sends the server
SIGTERM after a second and counts every outcome after it: answered (200), refused (the
connection was refused: nothing was sent, safe to retry), reset (a connection that was
accepted, its request sent, and closed without an answer), and how many of those resets
were requests sent before the signal. Prints a table; writes benchmarks/results/drain.md.
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.launch import ROOT, start_server
from benchmarks.load import RESULTS

HOUSE = [0.06, 0.0, 2.46, 0.0, 0.488, 7.8, 53.6, 3.2, 3.0, 193.0, 17.8, 392.6, 3.0]
SIGNAL_AFTER_S = 1.0


@dataclass
class Round:
    clients: int
    exit_code: int | None = None
    exit_s: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)  # after the signal: ok, refused, reset, error <status>
    reset_in_flight: int = 0  # resets of requests sent before the signal


def one_round(clients: int, workers: int) -> Round:
    work = Path(tempfile.mkdtemp(prefix="drain-"))
    server = start_server(ROOT / "models", work / "server.log", MODELSERVE_WORKERS=str(workers))
    result, stop, signalled = Round(clients), threading.Event(), threading.Event()
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as http:
            while not stop.is_set():
                before = not signalled.is_set()
                try:
                    status = http.post("/predict_price", json={"rows": [HOUSE]}).status_code
                    outcome = "ok" if status == 200 else f"error {status}"
                except httpx.ConnectError:
                    outcome = "refused"
                except httpx.HTTPError:
                    outcome = "reset"
                if signalled.is_set():
                    with lock:
                        result.outcomes[outcome] += 1
                        result.reset_in_flight += outcome == "reset" and before
                if outcome == "refused":
                    time.sleep(0.05)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(SIGNAL_AFTER_S)
    signalled.set()
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    result.exit_code = server.process.wait(60)
    result.exit_s = time.monotonic() - started
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join(30)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    lines = [
        f"SIGTERM after {SIGNAL_AFTER_S:g} s of /predict_price load, a new connection per request, {args.workers} worker(s); outcomes after the signal.",
        "",
        "| clients | round | exit | exit after s | answered 200 | refused | reset | of them sent before the signal | other |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for clients in args.clients:
        for number in range(1, args.rounds + 1):
            r = one_round(clients, args.workers)
            other = {k: v for k, v in r.outcomes.items() if k not in ("ok", "refused", "reset")}
            line = (
                f"| {clients} | {number} | {r.exit_code} | {r.exit_s:.1f} | {r.outcomes['ok']} | {r.outcomes['refused']} | "
                f"{r.outcomes['reset']} | {r.reset_in_flight} | {other or '-'} |"
            )
            print(line, flush=True)
            lines.append(line)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "drain.md").write_text("# SIGTERM under load\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

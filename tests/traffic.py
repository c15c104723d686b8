"""Steady background requests for the canary and shadow tests: a thread that posts until its block ends, every status counted.

Paced (PACE_S between requests, about 100 a second at most): a canary or shadow decision
needs tens of requests per side (`--min-requests`), and an unpaced loop sent 230 a second,
each on a new connection, keeping both cores busy for the whole watch window while the
other shard of `pytest -n 2` waited for them. A new connection per request (no keep-alive),
so that each request is routed on its own.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import httpx

PACE_S = 0.01


class Traffic:
    def __init__(self, url: str, path: str, bodies: list[dict[str, Any]], pace_s: float = PACE_S) -> None:
        self.codes: Counter[int] = Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(url, path, bodies, pace_s), daemon=True)

    def _run(self, url: str, path: str, bodies: list[dict[str, Any]], pace_s: float) -> None:
        with httpx.Client(base_url=url, timeout=60, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            i = 0
            while not self.stop.wait(pace_s):
                self.codes[client.post(path, json=bodies[i % len(bodies)]).status_code] += 1
                i += 1

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

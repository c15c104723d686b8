"""Peer: a stock BentoML 1.4 service, as its docs show one: batchable APIs with default settings.

MODELSERVE_MODEL_ROOT=models bentoml serve benchmarks.peers.stock_bentoml:Stock --port 3002
"""

from __future__ import annotations

from pathlib import Path

import bentoml

from benchmarks.peers.common import load


@bentoml.service
class Stock:
    def __init__(self) -> None:
        self.peer = load()

    @bentoml.api(batchable=True)
    def classify_image(self, images: list[Path]) -> list[dict[str, object]]:
        return self.peer.classify([path.read_bytes() for path in images])

    @bentoml.api(batchable=True)
    def sentiment(self, texts: list[str]) -> list[dict[str, object]]:
        return self.peer.sentiment(texts)

"""Peer: FastAPI calling onnxruntime per request, no batching (what a user writes by hand in an afternoon).

MODELSERVE_MODEL_ROOT=models uvicorn benchmarks.peers.fastapi_ort:app --port 3001
"""

from __future__ import annotations

from fastapi import FastAPI, UploadFile
from pydantic import BaseModel

from benchmarks.peers.common import load

app = FastAPI()
peer = load()


class Texts(BaseModel):
    texts: list[str]


@app.get("/readyz")
def ready() -> dict[str, str]:
    return {"status": "ready"}


@app.post("/classify_image")
def classify_image(images: list[UploadFile]) -> list[dict[str, object]]:
    return peer.classify([image.file.read() for image in images])


@app.post("/sentiment")
def sentiment(body: Texts) -> list[dict[str, object]]:
    return peer.sentiment(body.texts)

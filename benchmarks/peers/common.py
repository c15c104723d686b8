"""What every peer shares: the registry's CURRENT files and the project's own preprocessing, loaded by hand.

A peer is written the way a user would write it without this project's service: open
the ONNX file with onnxruntime, call the preprocessing functions, shape a JSON answer.
It feeds the text model what its graph takes (a dense row, or sparse ids and weights),
and with PEER_INT8=1 runs the image model's checked INT8 variant, the file
our service runs on this CPU (benchmarks/compare.py's "... INT8" peers).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.core.preprocessing import SPARSE_INPUTS, ImageSpec, TextVectorizer, decode_image
from service.core.registry import Registry

ROOT = Path(os.environ.get("MODELSERVE_MODEL_ROOT", "models"))
IMAGE_MODEL, TEXT_MODEL = "image_classifier", "imdb_sentiment"
INT8 = os.environ.get("PEER_INT8", "") == "1"


@dataclass
class Peer:
    image_session: ort.InferenceSession
    image_spec: ImageSpec
    image_labels: list[str]
    text_session: ort.InferenceSession
    vectorizer: TextVectorizer

    def classify(self, data: list[bytes]) -> list[dict[str, object]]:
        pixels = np.stack([decode_image(d, self.image_spec) for d in data])
        probabilities = self.image_session.run(None, {"image": pixels})[0]
        return [{"label": self.image_labels[int(p.argmax())], "score": float(p.max())} for p in probabilities]

    def sentiment(self, texts: list[str]) -> list[dict[str, object]]:
        if [i.name for i in self.text_session.get_inputs()] == list(SPARSE_INPUTS):
            feed = dict(zip(SPARSE_INPUTS, self.vectorizer.transform_sparse(texts), strict=True))
        else:
            feed = {"features": self.vectorizer.transform(texts)}
        scores = self.text_session.run(None, feed)[0].reshape(-1)
        return [{"label": "positive" if s >= 0.5 else "negative", "probability_positive": float(s)} for s in scores]


def load() -> Peer:
    registry = Registry(ROOT)
    image, text = registry.current(IMAGE_MODEL), registry.current(TEXT_MODEL)
    image_meta, text_meta = image.read_metadata(), text.read_metadata()
    vocabulary = json.loads((text.path / text_meta["preprocessing"]["vocabulary_file"]).read_text())
    image_file = image.variant_path(image.verify(), "int8") if INT8 else image.model_path
    return Peer(
        ort.InferenceSession(str(image_file), providers=["CPUExecutionProvider"]),
        ImageSpec.from_json(image_meta["preprocessing"]),
        list(image_meta["labels"]),
        ort.InferenceSession(str(text.model_path), providers=["CPUExecutionProvider"]),
        TextVectorizer.from_json(vocabulary).build_index(),
    )

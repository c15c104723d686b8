"""The shipped models' drift on real data: their test splits, then shifted copies, against a real server (run by hand).

nice -n 10 python -m experiments.drift_real

Serves models/ (one worker, scores every second, a score from 100 items on: Boston's test
split has 102 rows) and, per model, sends the test split, then shifted inputs behind it,
printing the served version's worst features after each phase: Boston's 102 test rows, then
the same rows with RM times 3; 500 test reviews, then 150 first sentences of other test
reviews (a client that sends short texts), then 150 clinical notes (another domain); 300
test photos, then 150 test photos at 30% brightness, then 150 rotated by 90 degrees.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageEnhance

from benchmarks.launch import ROOT, start_server
from tests.test_drift import clinical_notes
from training.datasets import load_housing, load_reviews
from training.imdb_sentiment import first_sentence

DATA = ROOT.parent / "shared" / "data"
ENV = {
    "MODELSERVE_WORKERS": "1",
    "MODELSERVE_DRIFT_INTERVAL_S": "1",
    "MODELSERVE_DRIFT_MIN_ITEMS": "100",
    "MODELSERVE_DRIFT_WINDOW": "5000",
}


def phase(client: httpx.Client, name: str, path: str, requests: list[dict], label: str, sent: dict[str, int]) -> None:
    for request in requests:
        response = client.post(path, **request)
        assert response.status_code == 200, response.text
        sent[name] = sent.get(name, 0) + (len(request["files"]) if "files" in request else len(next(iter(request["json"].values()))))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        entry = next(v for v in client.get(f"/models/{name}/drift").json().get("versions", [{}]) if v.get("role") == "current")
        if entry.get("window", {}).get("items", 0) >= sent[name]:
            break
        time.sleep(0.5)
    top = ", ".join(f"{f['name']} {f['score']:.3f}" for f in entry["features"][:4])
    print(f"| {name} v{entry['version']} | {label} | {entry['window']['items']} | {entry['status']} | {top} |", flush=True)


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def main() -> None:
    server = start_server(ROOT / "models", Path("/tmp/drift_real.log"), **ENV)
    sent: dict[str, int] = {}
    print("| model | phase | items in window | status | worst features (JS distance) |\n|---|---|---:|---|---|")
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            housing = load_housing(str(DATA / "boston_housing.npz"))
            rows = [{"json": {"rows": housing.x_test[i : i + 2].tolist()}} for i in range(0, len(housing.x_test), 2)]
            phase(client, "boston_housing", "/predict_price", rows, "102 test rows", sent)
            shifted = housing.x_test.copy()
            shifted[:, 5] *= 3
            rows = [{"json": {"rows": shifted[i : i + 2].tolist()}} for i in range(0, len(shifted), 2)]
            phase(client, "boston_housing", "/predict_price", rows, "+ the same rows, RM x3", sent)

            reviews = load_reviews(str(DATA / "aclImdb.tar.gz"))
            order = np.random.default_rng(1).permutation(len(reviews.test_texts))
            texts = [reviews.test_texts[i] for i in order[:500]]
            phase(
                client,
                "imdb_sentiment",
                "/sentiment",
                [{"json": {"texts": texts[i : i + 4]}} for i in range(0, 500, 4)],
                "500 test reviews",
                sent,
            )
            short = [first_sentence(reviews.test_texts[i]) for i in order[500:650]]
            phase(
                client,
                "imdb_sentiment",
                "/sentiment",
                [{"json": {"texts": short[i : i + 4]}} for i in range(0, 150, 4)],
                "+ 150 first sentences",
                sent,
            )
            notes = clinical_notes(150, seed=1)
            phase(
                client,
                "imdb_sentiment",
                "/sentiment",
                [{"json": {"texts": notes[i : i + 4]}} for i in range(0, 150, 4)],
                "+ 150 clinical notes",
                sent,
            )

            photos = sorted((DATA / "cats_vs_dogs_small" / "test").rglob("*.jpg"))
            np.random.default_rng(1).shuffle(photos)

            def requests(paths: list[Path], change=lambda image: image) -> list[dict]:
                return [{"files": [("images", ("p.jpg", jpeg(change(Image.open(p).convert("RGB"))), "image/jpeg"))]} for p in paths]

            phase(client, "image_classifier", "/classify_image", requests(photos[:300]), "300 test photos", sent)
            dark = requests(photos[300:450], lambda image: ImageEnhance.Brightness(image).enhance(0.3))
            phase(client, "image_classifier", "/classify_image", dark, "+ 150 at 30% brightness", sent)
            turned = requests(photos[450:600], lambda image: image.transpose(Image.Transpose.ROTATE_90))
            phase(client, "image_classifier", "/classify_image", turned, "+ 150 rotated 90 degrees", sent)
    finally:
        server.stop()


if __name__ == "__main__":
    main()

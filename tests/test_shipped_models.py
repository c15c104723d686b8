"""The models committed under models/: quality from their metadata, sensible answers, size budgets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.core.preprocessing import ImageSpec, decode_image
from service.core.registry import Registry
from service.core.runtime import LoadedModel, load_model

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = Registry(ROOT / "models")
FIXTURES = Path(__file__).parent / "fixtures"


def served(name: str) -> LoadedModel:
    return load_model(REGISTRY.current(name), ["CPUExecutionProvider"])


def test_every_model_is_served_and_verified() -> None:
    assert REGISTRY.served_models() == ["boston_housing", "image_classifier", "imdb_sentiment"]
    for name in REGISTRY.served_models():
        metadata = REGISTRY.current(name).verify()
        assert metadata["data"]["synthetic"] is False, "shipped models are trained on real data"
        assert metadata["parity"]["max_abs_diff"] <= 1e-4 and metadata["parity"]["samples"] >= 100


def test_quality_on_real_test_splits() -> None:
    imdb = REGISTRY.current("imdb_sentiment").read_metadata()
    assert imdb["metrics"]["test"]["accuracy"] >= 0.88 and imdb["metrics"]["test"]["samples"] == 25_000
    boston = REGISTRY.current("boston_housing").read_metadata()
    assert boston["metrics"]["test"]["mae"] <= 2.5
    image = REGISTRY.current("image_classifier").read_metadata()
    assert image["metrics"]["test"]["accuracy"] >= 0.95 and image["architecture"]["pretrained"] is True


def test_size_budgets() -> None:
    for name in REGISTRY.served_models():
        assert REGISTRY.current(name).model_path.stat().st_size <= 20 * 1024 * 1024
    total = sum(p.stat().st_size for p in (ROOT / "models").rglob("*") if p.is_file())
    # Every file here is baked into the serving image and cloned by every user: 48 MiB holds each kind's served
    # version, the one before it and image_classifier v4 (EfficientNet-Lite0, 13.5 MB); duplicates get pruned.
    assert total <= 48 * 1024 * 1024, f"models/ holds {total / 2**20:.1f} MiB: prune versions nobody serves or compares"


def test_obvious_reviews() -> None:
    answers = served("imdb_sentiment").predict([
        "Absolutely wonderful. A moving, beautifully acted film that I will happily watch again.",
        "Dreadful. Boring, badly acted and far too long; the worst film I have seen this year.",
        "I didn't like it at all. Not good.",
    ])  # fmt: skip
    assert [a["label"] for a in answers] == ["positive", "negative", "negative"]
    assert answers[0]["probability_positive"] > 0.9 and answers[1]["probability_positive"] < 0.1


def test_house_prices_are_plausible() -> None:
    model = served("boston_housing")
    rich = [0.02, 80.0, 2.0, 0, 0.41, 7.5, 30.0, 6.0, 2, 250, 14.0, 396.0, 3.0]
    poor = [20.0, 0.0, 18.1, 0, 0.70, 5.2, 100.0, 1.5, 24, 666, 20.2, 100.0, 30.0]
    high, low = (a["price"] for a in model.predict([np.array(rich), np.array(poor)]))
    assert 30 < high < 55 and 3 < low < 15


@pytest.mark.parametrize(("file", "label"), [("cat.jpg", "cats"), ("dog.jpg", "dogs")])
def test_real_photos(file: str, label: str) -> None:
    model = served("image_classifier")
    pixels = decode_image((FIXTURES / file).read_bytes(), model.assets)
    flipped = np.ascontiguousarray(pixels[:, ::-1])
    answers = model.predict([pixels, flipped])
    assert [a["label"] for a in answers] == [label, label]
    assert answers[0]["score"] > 0.8
    assert model.assets == ImageSpec(224, 224)


def test_the_served_text_model_takes_sparse_input_and_answers_as_the_dense_one_before_it() -> None:
    """v3 is v2's weights on sparse input: both load, each fed what its metadata says, and they agree."""
    sparse, dense = served("imdb_sentiment"), load_model(REGISTRY.get("imdb_sentiment", 2), ["CPUExecutionProvider"])
    assert sparse.input_names == ["ids", "weights"] and dense.input_names == ["features"]
    texts = ["A moving, beautifully acted film.", "Dull and far too long.", "I didn't like it at all. Not good.", "zzz"]
    got, expected = sparse.predict(texts), dense.predict(texts)
    assert [a["label"] for a in got] == [a["label"] for a in expected]
    assert np.allclose([a["probability_positive"] for a in got], [a["probability_positive"] for a in expected], atol=1e-5)

"""Sparse input for text models: the n-gram index, the padded rows, the rewritten graph and its serving.

A sparse-input version is built here from the shipped dense imdb_sentiment versions by the
export's own rewrite (training/sparse_input.py, onnx only), so both graphs carry the same
weights and must give the same probabilities. Serving them over HTTP: tests/test_sparse_serving.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from service.core.errors import ExportError, ModelLoadError
from service.core.preprocessing import SPARSE_INPUTS, TextVectorizer, dense_to_padded, tokenize
from service.core.registry import METADATA_FILE, MODEL_FILE, Registry, sha256_file
from service.core.runtime import load_model
from tests.generate import review
from training.sparse_input import sparse_input_graph

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = Registry(ROOT / "models")
CPU = ["CPUExecutionProvider"]
WORDS = ["good", "bad", "film", "not", "plot", "isn't", "the", "acting", "was", "great", "dull", "a"]


def random_texts(rng: np.random.Generator, n: int) -> list[str]:
    texts = []
    for _ in range(n):
        words = rng.choice([*WORDS, "unseen", "zzz", "Good", "<br />", "&amp;"], size=int(rng.integers(0, 30)))
        texts.append(" ".join(words))
    return texts


def string_lookup(vectorizer: TextVectorizer, text: str) -> list[int]:
    """The reference: every `tokenize` token looked up by its string."""
    return sorted(i for i in map(vectorizer.vocabulary.get, tokenize(text, vectorizer.ngram_max)) if i is not None)


@pytest.mark.parametrize("ngram_max", [1, 2, 3, 16])
def test_the_ngram_index_finds_exactly_the_tokens_a_string_lookup_finds(ngram_max: int) -> None:
    rng = np.random.default_rng(ngram_max)
    vectorizer = TextVectorizer.fit(random_texts(rng, 300), max_tokens=400, ngram_max=ngram_max, mode="tfidf", min_df=1)
    vectorizer.build_index()
    assert (vectorizer._index is None) == (ngram_max == 16), "16 words of 5 bits do not pack in 63 bits: the string lookup serves"
    for text in [*random_texts(rng, 200), "", "zzz", "good", "good good good", "It <br />isn't GOOD &amp; not bad"]:
        assert sorted(vectorizer.token_ids(text).tolist()) == string_lookup(vectorizer, text), text


def test_padded_rows_hold_the_dense_rows() -> None:
    vectorizer = TextVectorizer.fit(["good film", "bad bad film", "good good plot", "the film was good, not bad"] * 2, 50, 3, "tfidf")
    texts = ["good film", "nothing known here", "the film was good, not bad, the plot good"]
    ids, weights = vectorizer.transform_sparse(texts)
    dense = vectorizer.transform(texts)
    assert ids.dtype == np.int64 and weights.dtype == np.float32 and ids.shape == weights.shape
    assert ids.shape[1] == max(np.count_nonzero(row) for row in dense), "K is the longest row"
    rebuilt = np.zeros_like(dense)
    for row in range(len(texts)):
        np.add.at(rebuilt[row], ids[row], weights[row])  # padding adds weight 0 at id 0
    assert np.array_equal(rebuilt, dense)
    assert not weights[1].any(), "a text with no known token is all padding"
    assert [a.tolist() for a in dense_to_padded(dense)] == [ids.tolist(), weights.tolist()]
    empty_ids, empty_weights = vectorizer.transform_sparse(["unknown words only"])
    assert empty_ids.shape == (1, 1) and empty_weights.tolist() == [[0.0]], "K is at least 1"


def sparse_copy(version: int, into: Path) -> Registry:
    """A registry whose imdb_sentiment v1 is the shipped dense `version` rewritten to sparse input, metadata to match."""
    source = SHIPPED.get("imdb_sentiment", version)
    target = into / "imdb_sentiment" / "1"
    shutil.copytree(source.path, target)
    onnx.save(sparse_input_graph(onnx.load(source.model_path), "features"), target / MODEL_FILE)
    metadata = json.loads((target / METADATA_FILE).read_text())
    metadata["version"] = 1
    metadata["sha256"] = sha256_file(target / MODEL_FILE)
    metadata["inputs"] = [
        {"name": "ids", "dtype": "int64", "shape": [None, None]},
        {"name": "weights", "dtype": "float32", "shape": [None, None]},
    ]
    (target / METADATA_FILE).write_text(json.dumps(metadata))
    return Registry(into)


@pytest.mark.parametrize("version", [1, 2])  # v1: Dense(16) -> Dense(16) -> Dense(1); v2: Dense(1)
def test_a_sparse_graph_answers_as_its_dense_graph(version: int, tmp_path: Path) -> None:
    dense = load_model(SHIPPED.get("imdb_sentiment", version), CPU)
    sparse = load_model(sparse_copy(version, tmp_path).get("imdb_sentiment", 1), CPU)
    assert dense.input_names == ["features"] and sparse.input_names == list(SPARSE_INPUTS)
    assert set(sparse.feed(["A fine film."])) == set(SPARSE_INPUTS) and set(dense.feed(["A fine film."])) == {"features"}
    rng = np.random.default_rng(version)
    texts = [review(rng, bool(i % 2)) for i in range(40)] + ["zzz qqq", "Not good. Not good at all.", "x " * 3000]
    for batch in (texts[:1], texts):  # alone and as one batch, rows of very different lengths
        expected = [a["probability_positive"] for a in dense.predict(batch)]
        got = [a["probability_positive"] for a in sparse.predict(batch)]
        assert np.max(np.abs(np.array(expected) - np.array(got))) <= 1e-5
        assert [a["label"] for a in dense.predict(batch)] == [a["label"] for a in sparse.predict(batch)]


def test_a_version_whose_inputs_the_task_cannot_feed_is_refused(tmp_path: Path) -> None:
    registry = sparse_copy(2, tmp_path)
    path = registry.get("imdb_sentiment", 1).path / METADATA_FILE
    metadata = json.loads(path.read_text())
    metadata["inputs"][0]["dtype"] = "int32"
    path.write_text(json.dumps(metadata))
    with pytest.raises(ModelLoadError, match=r"sparse inputs \['ids', 'weights'\] must be \['int64', 'float32'\]"):
        load_model(registry.get("imdb_sentiment", 1), CPU)


def test_only_a_first_matmul_by_a_constant_is_rewritten() -> None:
    image = onnx.load(SHIPPED.current("image_classifier").model_path)
    with pytest.raises(ExportError, match="must feed one MatMul"):
        sparse_input_graph(image, image.graph.input[0].name)

"""Training end to end on small generated problems: learn, export, parity, registry, no promotion.

Everything runs through the CLI entry point (`training.__main__.main`), in this
process so TensorFlow is imported once.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from service.core.drift import read_profile
from service.core.registry import Registry
from service.core.runtime import load_model
from tests.generate import housing_rows, review, write_housing_csv, write_reviews_csv
from tests.trained import onnx_session, trained_version
from training.__main__ import main
from training.datasets import load_housing

# TensorFlow is imported by the first test that trains, not when the tests are collected (pytest -m unit does not wait for it).
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="pip install -e '.[train]'")]


def test_imdb_learns_separable_reviews(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_reviews_csv(tmp_path / "reviews.csv", n=600)
    assert (
        main(
            [
                "imdb_sentiment",
                "--data",
                str(data),
                "--registry",
                str(tmp_path / "models"),
                "--epochs",
                "12",
                "--batch-size",
                "32",
                "--max-tokens",
                "300",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "precision" in out and "recall" in out, "prints a classification report"
    registry, metadata = trained_version(tmp_path / "models", "imdb_sentiment")
    assert metadata["metrics"]["test"]["accuracy"] > 0.9
    assert metadata["labels"] == ["negative", "positive"]
    assert metadata["architecture"]["variant"] == "nb" and metadata["architecture"]["nb_weighting"]
    assert metadata["preprocessing"]["ngram_max"] == 3 and metadata["training"]["optimizer"] == "adam"
    assert metadata["training"]["chosen_by"].startswith("v2:")
    short = metadata["metrics"]["short_reviews"]
    assert short["test"] == metadata["metrics"]["test"]["first_sentence_accuracy"] and 0.5 < short["validation"] <= 1.0
    assert (registry.get("imdb_sentiment", 1).path / "vocab.json").is_file()
    session = onnx_session(registry, "imdb_sentiment")
    assert not isinstance(session.get_inputs()[0].shape[0], int), "the batch dimension is dynamic"
    assert [(i.name, i.type) for i in session.get_inputs()] == [("ids", "tensor(int64)"), ("weights", "tensor(float)")], "sparse input"
    assert [i["name"] for i in metadata["inputs"]] == ["ids", "weights"] and metadata["parity"]["max_abs_diff"] <= 1e-5

    model = load_model(registry.get("imdb_sentiment", 1), ["CPUExecutionProvider"])
    rng = np.random.default_rng(42)
    answers = model.predict([review(rng, True), review(rng, False)])
    assert [a["label"] for a in answers] == ["positive", "negative"]

    assert main(["promote", "imdb_sentiment", "latest", "--registry", str(tmp_path / "models")]) == 0
    assert registry.current_version("imdb_sentiment") == 1


def test_seed_variant_is_selectable(tmp_path: Path) -> None:
    data = write_reviews_csv(tmp_path / "reviews.csv", n=400)
    assert (
        main(
            ["imdb_sentiment", "--variant", "seed", "--data", str(data), "--registry", str(tmp_path), "--epochs", "8", "--batch-size", "32"]
        )
        == 0
    )
    _, metadata = trained_version(tmp_path, "imdb_sentiment")
    assert metadata["preprocessing"]["mode"] == "multi_hot" and metadata["preprocessing"]["ngram_max"] == 1
    assert metadata["training"]["optimizer"] == "rmsprop" and metadata["architecture"]["variant"] == "seed"
    assert metadata["architecture"]["layers"] == ["Dense(16, relu)", "Dense(16, relu)", "Dense(1, sigmoid)"]
    assert metadata["architecture"]["nb_weighting"] is None
    assert metadata["metrics"]["test"]["accuracy"] > 0.9


def test_nb_ratio_is_folded_into_the_exported_model(keras: ModuleType) -> None:
    """Training sees NB-scaled features; the exported model takes plain TF-IDF and gives the same answers."""
    import scipy.sparse as sp

    from training.imdb_sentiment import VARIANTS, build_model, fit
    from training.kinds.text import nb_ratio

    x = sp.csr_matrix(np.array([[1.0, 0.5, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 1.0, 1.0]], np.float32))
    y = np.array([1, 1, 0, 0], np.float32)
    # present in positives p = 1 + [2, 1, 0], in negatives q = 1 + [0, 1, 2]; r = log((p / 6) / (q / 6))
    assert np.allclose(nb_ratio(x, y), np.log([3 / 1, 2 / 2, 1 / 3]), atol=1e-6)
    config = VARIANTS["nb"] | {"epochs": 2, "batch_size": 2}
    keras.utils.set_random_seed(0)
    exported, history = fit(x, y, config)
    assert len(history["loss"]) == 2
    keras.utils.set_random_seed(0)
    reference = build_model(3, config, sparse=True)  # the same initial weights, trained by hand on x * r
    reference.fit(sp.csr_matrix(x @ sp.diags(nb_ratio(x, y))), y, batch_size=2, epochs=2, shuffle=True, verbose=0)
    expected = reference.predict(sp.csr_matrix(x @ sp.diags(nb_ratio(x, y))), verbose=0)
    assert np.allclose(exported.predict(x.toarray(), verbose=0), expected, atol=1e-5)


def test_first_sentence_is_the_short_review_check() -> None:
    from training.imdb_sentiment import first_sentence, sentences

    text = "Wow.<br /><br />What a film! I loved it, truly. Go & see it"
    assert sentences(text) == ["Wow. What a film!", "I loved it, truly.", "Go & see it"]
    assert first_sentence(text) == "Wow. What a film!"
    assert len(first_sentence("word " * 100).split()) == 40


def test_boston_beats_the_mean_predictor(tmp_path: Path) -> None:
    data = write_housing_csv(tmp_path / "housing.csv", n=300)
    assert (
        main(["boston_housing", "--data", str(data), "--registry", str(tmp_path), "--epochs", "15", "--folds", "2", "--ensemble", "1"]) == 0
    )
    registry, metadata = trained_version(tmp_path, "boston_housing")
    test = metadata["metrics"]["test"]
    assert test["mae"] < 0.5 * test["baseline_mae_train_mean"], test
    assert len(metadata["metrics"]["k_fold"]["val_mae_per_fold"]) == 2
    scaler = json.loads((registry.get("boston_housing", 1).path / "scaler.json").read_text())
    assert scaler["features"][0] == "CRIM" and len(scaler["mean"]) == 13
    # New versions record the training rows' range and a real test row (GET /models, the playground's form).
    split = load_housing(str(data))
    assert scaler["min"] == split.x_train.min(axis=0).tolist() and scaler["max"] == split.x_train.max(axis=0).tolist()
    assert metadata["data"]["example"]["values"] == dict(zip(split.feature_names, split.x_test[0].tolist()))
    assert metadata["data"]["example"]["target"] == float(split.y_test[0])
    assert metadata["preprocessing"]["feature_descriptions"]["RM"] == "average number of rooms per dwelling", "what each code means"

    model = load_model(registry.get("boston_housing", 1), ["CPUExecutionProvider"])
    x, y = housing_rows(50, seed=7)
    predicted = np.array([a["price"] for a in model.predict(list(x))])
    assert np.abs(predicted - y).mean() < 0.5 * np.abs(y - y.mean()).mean()

    # A profile for an existing version, without training: a new version with the same model.onnx, from the same data.
    assert main(["profile", "boston_housing", "1", "--data", str(data), "--registry", str(tmp_path)]) == 0
    profiled = registry.get("boston_housing", 2).verify()
    assert profiled["sha256"] == metadata["sha256"] and profiled["derived_from"]["version"] == 1
    assert profiled["profile"]["same_data_as_training"] is True
    rm = read_profile(registry.get("boston_housing", 2).path, "tabular").feature("RM")
    assert rm.count == len(split.x_train) and rm.summary["max"] == split.x_train[:, 5].max()


def test_boston_ensemble_trains_side_by_side(tmp_path: Path) -> None:
    data = write_housing_csv(tmp_path / "housing.csv", n=300)
    args = ["boston_housing", "--data", str(data), "--registry", str(tmp_path), "--epochs", "15", "--folds", "2", "--ensemble", "3"]
    assert main(args) == 0
    registry, metadata = trained_version(tmp_path, "boston_housing")
    assert metadata["architecture"]["ensemble"] == 3 and metadata["architecture"]["width"] == 64
    assert metadata["architecture"]["variant"] == "robust_long" and metadata["training"]["chosen_by"].startswith("v2:")
    assert metadata["training"]["loss"] == "huber" and metadata["training"]["huber_delta"] == 1.0
    assert metadata["metrics"]["test"]["mae"] < 0.5 * metadata["metrics"]["test"]["baseline_mae_train_mean"]
    assert len(metadata["training"]["history"]["val_mae"]) == 15
    session = onnx_session(registry, "boston_housing")
    assert [o.shape[1] for o in session.get_outputs()] == [1], "the members are averaged into one price"


def test_parity_failure_stops_the_run_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], keras: ModuleType
) -> None:
    import training.publish as publish_module
    from training.export import export_onnx

    def export_a_different_model(model, input_spec, output_name, path, sparse=False):  # type: ignore[no-untyped-def]
        other = keras.models.clone_model(model)  # same architecture, fresh random weights
        return export_onnx(other, input_spec, output_name, path, sparse=sparse)

    monkeypatch.setattr(publish_module, "export_onnx", export_a_different_model)
    data = write_housing_csv(tmp_path / "housing.csv", n=200)
    status = main(
        ["boston_housing", "--data", str(data), "--registry", str(tmp_path / "models"), "--epochs", "2", "--folds", "2", "--ensemble", "1"]
    )
    assert status == 1, "an expected failure: one line and exit 1, not a traceback"
    assert "error: ONNX and Keras differ" in capsys.readouterr().err
    assert Registry(tmp_path / "models").versions("boston_housing") == []
    assert list((tmp_path / "models" / "boston_housing").iterdir()) == [], "no staging directory left behind"


def test_bad_data_fails_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "reviews.csv"
    bad.write_text("notes,stars,extra\nhello,5,x\n")
    assert main(["imdb_sentiment", "--data", str(bad), "--registry", str(tmp_path)]) == 2
    assert "no text column" in capsys.readouterr().err
    assert Registry(tmp_path).versions("imdb_sentiment") == []


def test_non_numeric_training_data_is_a_data_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Round 3, defect 3: a non-numeric cell, an object array or a malformed CSV gave a traceback."""
    x, y = housing_rows(60)
    as_text = x.astype(str)
    as_text[3, 2] = "abc"
    np.savez(tmp_path / "text.npz", x=as_text, y=y)
    np.savez(tmp_path / "objects.npz", x=as_text.astype(object), y=y)
    (tmp_path / "broken.csv").write_text('crim,zn\n"0.1,2\n')
    (tmp_path / "reviews.jsonl").write_text('{"review": "fine", "sentiment": 1}\n{"review": \n')
    cases = [
        ("boston_housing", "text.npz", "every value of x must be a number"),
        ("boston_housing", "objects.npz", "not a Keras-layout .npz with numeric arrays x and y"),
        ("boston_housing", "broken.csv", "not readable as CSV"),
        ("imdb_sentiment", "reviews.jsonl", "not readable as jsonl"),
    ]
    for name, data, words in cases:
        assert main([name, "--data", str(tmp_path / data), "--registry", str(tmp_path / "registry"), "--epochs", "1"]) == 2, data
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, err

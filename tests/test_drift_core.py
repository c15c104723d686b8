"""Drift's parts in this process: histograms and distances, profiles on disk, each kind's summaries, windows, the log."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.spatial.distance import jensenshannon

from service.core.catalog import RECIPES
from service.core.config import Settings
from service.core.drift import (
    MISSING,
    OTHER,
    PROFILE_FILE,
    Profile,
    categorical_feature,
    compare,
    js_distance,
    numeric_feature,
    psi,
    read_profile,
)
from service.core.errors import ConfigError, RegistryError
from service.core.prediction_log import PredictionLog
from service.core.preprocessing import ImageSpec, StandardScaler, TextVectorizer
from service.core.tasks.profiles import INPUT, OUTPUT, PREDICTED_LABEL, PREDICTED_SCORE, PREDICTED_VALUE, profiler
from service.http.drift import Window
from tests.generate import image_bytes

pytestmark = pytest.mark.unit

TASKS = {recipe.task.assets_kind: recipe.task for recipe in RECIPES.values()}


def test_js_distance_is_scipys_and_bounded() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        p, counts = rng.random(8), rng.integers(0, 50, 8)
        assert js_distance(p, counts) == pytest.approx(jensenshannon(p / p.sum(), counts / counts.sum(), base=2), abs=1e-9)
    assert js_distance([0.5, 0.5], [10, 10]) == pytest.approx(0.0)
    assert js_distance([1.0, 0.0], [0, 7]) == pytest.approx(1.0), "disjoint histograms are as far apart as can be"
    assert js_distance([1.0, 0.0, 0.0], [5, 0, 1]) < 1.0, "a bin the reference never filled is fine"


def test_psi_floors_empty_bins() -> None:
    assert psi([0.5, 0.5], [50, 50]) == pytest.approx(0.0)
    assert psi([0.25, 0.75], [75, 25]) == pytest.approx(np.log(3), rel=1e-6)  # 0.5 ln 3 + (-0.5) ln(1/3)
    assert np.isfinite(psi([1.0, 0.0], [0, 10])), "an empty reference bin counts as 1e-4, not as zero"


def test_numeric_bins_at_deciles_repeated_values_merge_and_small_references_get_fewer_bins() -> None:
    feature = numeric_feature("x", INPUT, np.arange(1000.0))
    assert feature.bins == 10 and np.allclose(feature.reference, 0.1)
    assert list(feature.bin_indices([-5.0, 0.0, 99.0, 100.0, 5000.0, float("nan")])) == [0, 0, 0, 1, 9, MISSING]
    binary = numeric_feature("chas", INPUT, [0.0] * 93 * 10 + [1.0] * 7 * 10)  # a 0/1 column: one edge, at 0
    assert binary.edges == (0.0,) and binary.reference == pytest.approx((0.93, 0.07))
    small = numeric_feature("y", INPUT, np.arange(80.0))
    assert small.bins == 4, "80 values: 20 per bin at least"
    with pytest.raises(ValueError, match="no finite"):
        numeric_feature("z", INPUT, [float("nan")])


def test_categorical_bins_have_an_other_bin() -> None:
    feature = categorical_feature(PREDICTED_LABEL, OUTPUT, ["cat", "dog", "dog", "dog"], ["cat", "dog"])
    assert feature.reference == pytest.approx((0.25, 0.75, 0.0)) and feature.bin_labels() == ["cat", "dog", OTHER]
    assert list(feature.bin_indices(["dog", "bird"])) == [1, 2]
    shifted = compare(feature, [0, 0, 30], threshold=0.2)
    assert shifted["drifted"] and shifted["score"] == pytest.approx(1.0)


def test_a_profile_round_trips_and_a_bad_one_says_why(tmp_path: Path) -> None:
    profile = Profile("tabular", (numeric_feature("x", INPUT, np.arange(300.0)),), "2026-01-01T00:00:00+00:00", {"data": "test"})
    profile.write(tmp_path)
    assert read_profile(tmp_path, "tabular") == profile
    with pytest.raises(RegistryError, match="profiles a 'tabular' model"):
        read_profile(tmp_path, "text")
    (tmp_path / PROFILE_FILE).write_text(json.dumps(profile.to_json() | {"features": [{"name": "x"}]}))
    with pytest.raises(RegistryError, match="unusable"):
        read_profile(tmp_path, "tabular")
    (tmp_path / PROFILE_FILE).unlink()
    with pytest.raises(RegistryError, match="python -m training profile"):
        read_profile(tmp_path, "tabular")


def test_rows_are_summarized_feature_by_feature() -> None:
    scaler = StandardScaler(("A", "B"), np.zeros(2), np.ones(2))
    kind = profiler(TASKS["tabular"])
    summary = kind.summarize(kind.capture([np.array([1.0, 2.0]), np.array([3.0, 4.0])]), scaler)
    assert kind.input_names(scaler) == ["A", "B"] and list(summary["A"]) == [1.0, 3.0] and list(summary["B"]) == [2.0, 4.0]
    assert kind.answer_features([{"price": 21.5, "unit": "$"}]) == {PREDICTED_VALUE: [21.5]}


def test_texts_are_summarized_by_length_and_words_outside_the_vocabulary() -> None:
    vocabulary = TextVectorizer({"a": 0, "good": 1, "film": 2, "good film": 3}, ngram_max=2)
    kind = profiler(TASKS["text"])
    summary = kind.summarize(["A good film.", "A good reactor of plutonium", "!!!"], vocabulary)
    assert list(summary["length"]) == [3, 5, 0]
    assert list(summary["oov_share"]) == pytest.approx([0.0, 0.6, 1.0]), "no words at all: nothing the model knows"
    assert kind.held_out_inputs == {"oov_share"} and kind.raw_inputs(["x"]) == ["x"]
    answers = [{"label": "positive", "probability_positive": 0.9}, {"label": "negative", "probability_positive": 0.2}]
    assert kind.answer_features(answers) == {PREDICTED_LABEL: ["positive", "negative"], PREDICTED_SCORE: [0.9, 0.2]}


def test_an_image_keeps_the_size_it_was_sent_at_and_is_measured_on_the_pixels_its_request_decoded() -> None:
    """JPEG draft decoding shrinks the opened image; capture reads the size before a request decodes it."""
    task, spec, settings = TASKS["image"], ImageSpec(32, 32), Settings()
    white = task.check(image_bytes(Image.new("RGB", (1600, 900), (255, 255, 255)), "JPEG"), spec, settings)
    black = task.check(image_bytes(Image.new("RGB", (40, 30), (0, 0, 0)), "PNG"), spec, settings)
    red = task.check(image_bytes(Image.new("RGB", (64, 48), (255, 0, 0)), "PNG"), spec, settings)
    kind = profiler(task)
    captured = kind.capture([white, black, red])
    for item in (white, black, red):
        task.decode(item, spec, settings)  # what the request did before the drift thread looks
    assert white.image.size != (1600, 900), "draft mode shrank the decoded JPEG"
    summary = kind.summarize(captured, spec)
    assert list(summary["width"]) == [1600, 40, 64] and list(summary["height"]) == [900, 30, 48]
    assert summary["brightness"][0] == pytest.approx(1.0, abs=0.01) and summary["brightness"][1] == 0.0
    assert summary["saturation"][0] == pytest.approx(0.0, abs=0.01) and summary["saturation"][2] == pytest.approx(1.0)
    palette = task.check(image_bytes(Image.new("RGB", (50, 40), (0, 0, 255)).convert("P"), "PNG"), spec, settings)
    clear = task.check(image_bytes(Image.new("RGBA", (50, 40), (255, 255, 255, 0)), "PNG"), spec, settings)
    for item in (palette, clear):
        task.decode(item, spec, settings)
    other_modes = kind.summarize(kind.capture([palette, clear]), spec)
    assert other_modes["saturation"][0] == pytest.approx(1.0) and np.isfinite(other_modes["brightness"]).all()
    pixels = kind.summarize(kind.capture([np.full((32, 32, 3), 128, np.uint8)]), spec)  # the v2 pixels tensor
    assert pixels["width"][0] == 32 and pixels["brightness"][0] == pytest.approx(128 / 255, abs=0.01)


def test_the_window_keeps_the_most_recent_items_per_feature() -> None:
    features = [numeric_feature("x", INPUT, np.arange(100.0)), categorical_feature("label", OUTPUT, ["a", "b"], ["a", "b"])]
    window = Window(features, capacity=5)
    window.add({"x": [0.0, 0.0, 0.0], "label": ["a", "a", "a"]}, 3)
    window.add({"x": [99.0] * 4}, 4)  # no label: counted nowhere for that feature
    assert window.items == 5
    counts = window.counts()
    assert counts["x"] == [1, 0, 0, 0, 4] and counts["label"] == [1, 0, 0]
    window.add({"x": list(range(12)), "label": ["b"] * 12}, 12)  # more than the capacity: the last 5 stay
    assert window.counts()["label"] == [0, 5, 0] and sum(window.counts()["x"]) == 5


def test_the_prediction_log_writes_whole_files_rotates_and_keeps_a_size(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, file_mb=1, file_s=3600, keep_mb=1)
    rows = [{"time": pd.Timestamp.now(tz="UTC"), "model": "m", "version": 1, "text": "x" * 1000, "n": float(i)} for i in range(3000)]
    log.add("m", rows[:500])
    assert not list((tmp_path).rglob("*.parquet")), "under the size limit nothing is written yet"
    log.add("m", rows[500:1100])  # over 1 MB of rows: a file
    assert len(list((tmp_path / "m").glob("*.parquet"))) == 1
    log.add("m", rows[1100:])
    log.flush_all()
    files = sorted((tmp_path / "m").glob("*.parquet"))
    assert sum(f.stat().st_size for f in files) <= 1024 * 1024, "the oldest files go beyond keep_mb"
    read = pd.read_parquet(tmp_path / "m")
    assert read["n"].max() == 2999.0 and len(read) == sum(len(pd.read_parquet(f)) for f in files)
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")], "no half-written file is left"


def test_the_drift_settings_are_checked() -> None:
    assert Settings.from_env({"MODELSERVE_DRIFT_SAMPLE": "0.25"}).drift_sample == 0.25
    for name, value in (("DRIFT_SAMPLE", "1.5"), ("DRIFT_THRESHOLD", "0"), ("DRIFT_THRESHOLD", "nan"), ("DRIFT_WINDOW", "0")):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({f"MODELSERVE_{name}": value})

"""The model kinds' tasks (service/core/tasks) and their adapters per way in, in this process, by plain calls.

Each task is the one a shipped model's CURRENT version names in its metadata, with that
version's assets: what a request item may be and the message when it may not, the
tensor the items become, the answers an output batch becomes, and how the Open
Inference Protocol's tensors, batch tables and the friendly API's descriptions map onto
them. No session runs here: the outputs are chosen, so that each answer is known.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np
import pytest
from PIL import Image

from service.core.config import Settings
from service.core.errors import InputError, UsageError
from service.core.registry import Registry, VersionFiles
from service.core.tasks import ImageClassification, TabularRegression, Task, TextClassification
from service.core.tasks.batch_inputs import batch_input
from service.core.tasks.friendly import friendly_api
from service.core.tasks.kinds import task_for
from service.core.tasks.tensors import v2_tensors
from tests.conftest import FIXTURES, SHIPPED_MODELS

pytestmark = pytest.mark.unit

SETTINGS = Settings()
CAT = (FIXTURES / "cat.jpg").read_bytes()


class Kind:
    """The task of the first shipped model of a kind, with its CURRENT version's metadata and assets, and its adapters."""

    def __init__(self, kind: type[Task]) -> None:
        registry = Registry(SHIPPED_MODELS)
        versions = [registry.current(name) for name in registry.model_names()]
        version = next(v for v in versions if type(task_for(v.read_metadata())) is kind)
        self.metadata = version.read_metadata()
        self.task: Any = task_for(self.metadata)
        self.assets = self.task.load_assets(VersionFiles(version.path), self.metadata)
        self.tensors: Any = v2_tensors(self.task)
        self.table: Any = batch_input(self.task)
        self.friendly: Any = friendly_api(self.task)

    def check(self, value: Any, settings: Settings = SETTINGS) -> Any:
        return self.task.check(value, self.assets, settings)

    def answers(self, outputs: np.ndarray) -> list[dict[str, Any]]:
        return self.task.answers(outputs, self.assets, self.metadata)


@pytest.fixture(scope="module")
def text() -> Kind:
    return Kind(TextClassification)


@pytest.fixture(scope="module")
def image() -> Kind:
    return Kind(ImageClassification)


@pytest.fixture(scope="module")
def table() -> Kind:
    return Kind(TabularRegression)


@pytest.mark.parametrize("kind", [TextClassification, ImageClassification, TabularRegression], ids=lambda k: k.name)
def test_smoke_items_make_a_batch_and_sensible_answers_pass(kind: type[Task]) -> None:
    model = Kind(kind)
    items = model.task.smoke_items(model.assets)
    batch = model.task.to_tensor(items, model.assets)
    assert batch.shape[0] == len(items) and np.isfinite(batch).all()
    width = model.metadata["outputs"][0]["shape"][-1]
    outputs = np.full((len(items), width), 1.0 / width, np.float32)
    answers = model.answers(outputs)
    assert len(answers) == len(items) and all(model.task.check_answer(a) is None for a in answers)
    arrays = model.tensors.arrays(answers, model.metadata)
    assert [t.name for t in model.tensors.outputs(model.metadata)] == list(arrays)
    assert all(len(a) == len(items) for a in arrays.values())


# ---------------------------------------------------------------- text


@pytest.mark.parametrize(
    ("value", "message"),
    [(None, "is missing"), (42, "must be a string"), ("   ", "is empty"), ("x" * 101, "has 101 characters, more than the limit of 100")],
)
def test_text_that_cannot_be_scored_is_refused(text: Kind, value: Any, message: str) -> None:
    with pytest.raises(InputError, match=message):
        text.check(value, Settings(max_text_chars=100))


def test_texts_become_one_row_each_and_answers_follow_the_threshold(text: Kind) -> None:
    batch = text.task.to_tensor([text.check("A wonderful film."), text.check("Dull.")], text.assets)
    assert batch.shape[0] == 2 and batch.dtype == np.float32
    negative, positive = text.metadata["labels"]
    threshold = float(text.metadata["preprocessing"].get("threshold", 0.5))
    answers = text.answers(np.array([[threshold - 0.01], [threshold]], np.float32))
    assert [a["label"] for a in answers] == [negative, positive]
    assert answers[1]["probability_positive"] == pytest.approx(threshold)
    assert text.task.observation(answers[1]) == (positive, pytest.approx(threshold))
    assert text.task.score(answers, [negative, negative]) == 0.5


def test_nonsense_text_answers_are_caught(text: Kind) -> None:
    assert text.task.check_answer({"label": "positive", "probability_positive": 1.5}) == "probability outside [0, 1]"
    assert text.task.check_answer({"label": "positive", "probability_positive": math.nan}) is not None


def test_text_tensors_take_utf8_bytes_or_strings(text: Kind) -> None:
    (tensor,) = text.tensors.inputs(text.assets)
    assert (tensor.datatype, tensor.shape) == ("BYTES", (-1,))
    assert text.tensors.value(tensor, "ünï".encode(), SETTINGS) == "ünï"
    assert text.tensors.value(tensor, "as JSON", SETTINGS) == "as JSON"
    with pytest.raises(InputError, match="is not valid UTF-8"):
        text.tensors.value(tensor, b"\xff\xfe", SETTINGS)


def test_the_text_column_of_a_table_is_found_or_asked_for(text: Kind) -> None:
    assert text.table.columns(["id", "Review"], text.assets, None) == ["Review"]
    assert text.table.columns(["id", "notes"], text.assets, "NOTES") == ["notes"]
    with pytest.raises(UsageError, match="name the text column with --text-column"):
        text.table.columns(["id", "notes"], text.assets, None)


# ---------------------------------------------------------------- images


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 50, 40)).save(buffer, "PNG")
    return buffer.getvalue()


def test_an_image_is_checked_from_its_header_then_decoded_at_the_versions_size(image: Kind) -> None:
    item = image.check(CAT)
    pixels = image.task.decode(item, image.assets, SETTINGS)
    assert pixels.dtype == np.uint8 and pixels.shape == (image.assets.height, image.assets.width, 3)
    assert image.task.to_tensor([pixels, pixels], image.assets).shape == (2, image.assets.height, image.assets.width, 3)


@pytest.mark.parametrize(
    ("value", "settings", "message"),
    [
        (b"not an image at all", SETTINGS, "not a supported image"),
        (CAT, Settings(max_image_bytes=1_000), "is larger than the limit of 1,000 bytes"),
        (png(300, 300), Settings(max_image_pixels=10_000), "90,000 pixels"),
        ("a string", SETTINGS, "must be image bytes, got str"),
        (np.zeros((5, 5, 3), np.uint8), SETTINGS, "pixels must be uint8"),
    ],
    ids=["garbage", "too-many-bytes", "too-many-pixels", "not-bytes", "wrong-pixels"],
)
def test_images_that_cannot_be_used_are_refused_before_decoding(image: Kind, value: Any, settings: Settings, message: str) -> None:
    with pytest.raises(InputError, match=message):
        image.check(value, settings)


def test_a_truncated_image_is_found_when_decoded(image: Kind) -> None:
    item = image.check(CAT[: len(CAT) // 2])  # the header is intact
    with pytest.raises(InputError, match="truncated or corrupt"):
        image.task.decode(item, image.assets, SETTINGS)


def test_a_request_over_the_pixel_budget_is_refused(image: Kind) -> None:
    items = [image.check(png(100, 100)) for _ in range(3)]
    assert image.task.cost(items) == 30_000
    image.task.check_request(items[:2], Settings(max_request_pixels=20_000))
    with pytest.raises(InputError, match="30,000 pixels in all, more than the limit of 20,000"):
        image.task.check_request(items, Settings(max_request_pixels=20_000))


def test_image_answers_name_the_most_probable_class(image: Kind) -> None:
    labels = image.metadata["labels"]
    answers = image.answers(np.array([[0.2, 0.8], [0.9, 0.1]], np.float32))
    assert [a["label"] for a in answers] == [labels[1], labels[0]]
    assert answers[0]["probabilities"] == {labels[0]: pytest.approx(0.2), labels[1]: pytest.approx(0.8)}
    assert image.task.check_answer({"label": labels[0], "score": 0.9, "probabilities": {labels[0]: 0.9, labels[1]: 0.3}}) is not None


def test_image_tensors_take_files_or_pixels(image: Kind) -> None:
    files, pixels = image.tensors.inputs(image.assets)
    assert (files.datatype, pixels.datatype, pixels.shape) == ("BYTES", "UINT8", (-1, image.assets.height, image.assets.width, 3))
    assert image.tensors.value(files, base64.b64encode(CAT).decode(), SETTINGS) == CAT, "JSON carries base64"
    assert image.tensors.value(files, CAT, SETTINGS) == CAT, "binary data carries the file"
    with pytest.raises(InputError, match="is not valid base64"):
        image.tensors.value(files, "http://example.com/cat.jpg", SETTINGS)


def test_images_decoded_for_another_size_are_conformed(image: Kind) -> None:
    (item,) = image.task.conform([np.zeros((10, 20, 3), np.uint8)], image.assets)
    assert item.shape == (image.assets.height, image.assets.width, 3)


# ---------------------------------------------------------------- table rows


def test_a_row_is_taken_by_name_in_any_case_or_in_order(table: Kind) -> None:
    names = table.assets.feature_names
    values = [float(v) for v in table.assets.inverse_example()]
    by_name = table.check({n.lower(): v for n, v in zip(names, values)})
    np.testing.assert_allclose(by_name, table.check(values))
    batch = table.task.to_tensor([by_name, by_name], table.assets)
    assert batch.shape == (2, len(names)) and batch.dtype == np.float32


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"crim": 1}, "missing features ['ZN'"),
        ([1.0, 2.0], "has 2 values, expected 13"),
        ("a row", "must be an object of named features or a list of 13 numbers"),
        ([-1.0] + [1.0] * 12, "feature CRIM must be >= 0, got -1.0"),
        ([math.nan] + [1.0] * 12, "feature CRIM is nan; only finite numbers are accepted"),
        ([1e300] * 13, "too large for the model"),
    ],
)
def test_rows_that_cannot_be_scored_are_refused(table: Kind, row: Any, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("[", r"\[")):
        table.check(row)


def test_an_unknown_feature_is_named(table: Kind) -> None:
    row = dict(zip(table.assets.feature_names, map(float, table.assets.inverse_example()))) | {"garden": 1.0}
    with pytest.raises(InputError, match=r"unknown features \['garden'\]"):
        table.check(row)


def test_regression_answers_carry_the_value_and_unit(table: Kind) -> None:
    answers = table.answers(np.array([[21.5], [30.0]], np.float32))
    field, unit = table.task.answer_field, table.metadata["preprocessing"].get("unit", "")
    assert answers == [{field: 21.5, "unit": unit}, {field: 30.0, "unit": unit}]
    assert table.task.score(answers, [20.5, 31.0]) == pytest.approx(1.0), "mean absolute error"
    assert table.task.check_answer({field: math.inf, "unit": unit}) == "not finite"


def test_a_table_gives_rows_from_its_feature_columns(table: Kind) -> None:
    columns = [n.lower() for n in table.assets.feature_names] + ["id"]
    picked = table.table.columns(columns, table.assets, None)
    assert picked == columns[:-1]
    row = dict(zip(picked, ["0.5"] * len(picked))) | {picked[0]: ""}
    value = table.table.value(row, picked, from_text=True)
    assert picked[0] not in value and value[picked[1]] == 0.5, "an empty cell is missing, text cells are numbers"
    with pytest.raises(InputError, match="missing features"):
        table.check(value)
    with pytest.raises(UsageError, match="no column for features"):
        table.table.columns(["id"], table.assets, None)


def test_row_tensors_are_fp32_features_in_the_models_order(table: Kind) -> None:
    (tensor,) = table.tensors.inputs(table.assets)
    assert (tensor.datatype, tensor.shape) == ("FP32", (-1, len(table.assets.feature_names)))
    values = np.asarray(table.assets.inverse_example(), np.float32)
    np.testing.assert_allclose(table.check(table.tensors.value(tensor, values, SETTINGS)), values, rtol=1e-6)


def test_versions_are_described_for_clients(table: Kind, text: Kind) -> None:
    described = table.friendly.describe(table.assets, table.metadata)
    assert [f["name"] for f in described["features"]] == list(table.assets.feature_names)
    assert described["field"] == "rows" and set(described["example"]["values"]) == set(table.assets.feature_names)
    assert text.friendly.describe(text.assets, text.metadata)["positive"] == text.metadata["labels"][1]

"""Models as data, in this process: the task a version's metadata names, categorical rows, the runtime following the registry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks.launch import ROOT
from service.core.config import Settings
from service.core.errors import InputError, ModelLoadError, NotFoundError
from service.core.preprocessing import StandardScaler, TableEncoder, category_text
from service.core.registry import CURRENT_FILE, METADATA_FILE, is_model_name
from service.core.runtime import CurrentWatcher, ModelRuntime
from service.core.tasks.image_classification import ImageClassification
from service.core.tasks.kinds import task_for
from service.core.tasks.tabular_regression import TabularRegression
from service.core.tasks.tensors import v2_tensors
from service.core.tasks.text_classification import MulticlassTextClassification, TextClassification

pytestmark = pytest.mark.unit

SHIPPED_TABLE = "boston_housing"


def encoder() -> TableEncoder:
    x = np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 20.0]])
    return TableEncoder(("soil", "rain", "temp"), StandardScaler.fit(x, ("rain", "temp")), {"soil": ("clay", "loam", "sand")})


def test_the_task_comes_from_metadata_not_from_the_name() -> None:
    assert isinstance(task_for({"preprocessing": {"kind": "image"}}), ImageClassification)
    assert type(task_for({"preprocessing": {"kind": "text"}, "labels": ["no", "yes"]})) is TextClassification
    assert isinstance(task_for({"preprocessing": {"kind": "text"}, "labels": ["a", "b", "c"]}), MulticlassTextClassification)
    table = task_for({"preprocessing": {"kind": "tabular", "answer_field": "yield_t_ha", "target": "Yield"}, "outputs": [{"name": "x"}]})
    assert isinstance(table, TabularRegression) and table.answer_field == "yield_t_ha"
    assert task_for({"preprocessing": {"kind": "tabular"}, "outputs": [{"name": "price"}]}).answer_field == "price", "Boston's versions"
    assert task_for({"preprocessing": {"kind": "tabular", "answer_field": "model"}}).answer_field == "value", "never an answer's own key"
    assert task_for({"preprocessing": {"kind": "text"}, "labels": ["a", "b"]}) is task_for(
        {"preprocessing": {"kind": "text"}, "labels": ["c", "d"]}
    )
    with pytest.raises(ModelLoadError, match="unknown kind 'audio'"):
        task_for({"preprocessing": {"kind": "audio"}})


def test_model_names_are_plain() -> None:
    assert all(is_model_name(n) for n in ("tickets", "crop-yield", "a", "model_2", "x" * 64))
    assert not any(is_model_name(n) for n in ("Tickets", "-x", "_x", "a b", "a/b", "", "x" * 65, "é"))


def test_a_categorical_row_is_one_hot_with_the_categories_seen_in_training() -> None:
    table = encoder()
    row = table.check({"SOIL": "sand", "rain": 3.0, "temp": 20.0})
    assert row.tolist() == [2.0, 3.0, 20.0], "the category's index, in the request's column order"
    assert table.check(["loam", 1, 10]).tolist() == [1.0, 1.0, 10.0]
    tensor = table.transform(np.stack([row]))
    assert tensor.shape == (1, table.width) == (1, 5)
    assert tensor[0, 2:].tolist() == [0.0, 0.0, 1.0] and tensor[0, :2] == pytest.approx([0.0, 0.0], abs=1e-6)
    with pytest.raises(InputError, match=r"feature soil is 'peat', not a category the model was trained on \('clay', 'loam', 'sand'\)"):
        table.check({"soil": "peat", "rain": 1, "temp": 1})
    with pytest.raises(InputError, match="feature rain must be a number"):
        table.check({"soil": "clay", "rain": "wet", "temp": 1})
    again = TableEncoder.from_json(json.loads(json.dumps(table.to_json())))
    assert again.columns == table.columns and again.categories == table.categories
    assert np.array_equal(again.transform(np.stack([row])), tensor)


def test_category_cells_read_as_training_wrote_them() -> None:
    assert [category_text(v) for v in ("a", 3, 3.0, 2.5, True)] == ["a", "3", "3", "2.5", "True"]
    assert category_text(None) is None and category_text(float("nan")) is None


def test_categorical_rows_on_v2_are_json_rows() -> None:
    task = task_for({"preprocessing": {"kind": "tabular"}, "outputs": [{"name": "value"}]})
    tensors = v2_tensors(task)
    [declared] = tensors.inputs(encoder())
    assert (declared.name, declared.datatype, declared.shape) == ("rows", "BYTES", (-1,))
    assert tensors.value(declared, b'{"soil": "clay", "rain": 1, "temp": 2}', Settings()) == {"soil": "clay", "rain": 1, "temp": 2}
    with pytest.raises(InputError, match="is not a row as JSON"):
        tensors.value(declared, b"{soil", Settings())


def copy_shipped(root: Path, name: str) -> None:
    shutil.copytree(ROOT / "models" / SHIPPED_TABLE, root / name)


def test_the_runtime_follows_the_registry(tmp_path: Path) -> None:
    copy_shipped(tmp_path, "first")
    runtime = ModelRuntime(Settings(model_root=tmp_path))
    runtime.load_all()
    watcher = CurrentWatcher(runtime, poll_s=1)
    copy_shipped(tmp_path, "second")
    copy_shipped(tmp_path, "Not Allowed")
    copy_shipped(tmp_path, "broken")
    metadata = tmp_path / "broken" / (tmp_path / "broken" / CURRENT_FILE).read_text().strip() / METADATA_FILE
    metadata.write_text(json.dumps(json.loads(metadata.read_text()) | {"sha256": "0" * 64}))
    watcher.follow_current()
    assert set(runtime.served()) == {"first", "second"}
    assert "is not allowed" in runtime.refused["Not Allowed"]["reason"] and "checksum mismatch" in runtime.refused["broken"]["reason"]
    shutil.rmtree(tmp_path / "first")
    watcher.follow_current()
    assert set(runtime.served()) == {"second"}
    with pytest.raises(NotFoundError, match="not served here"):
        runtime.get("first")
    shutil.rmtree(tmp_path / "broken")
    watcher.follow_current()
    assert "broken" not in runtime.refused, "a refusal is forgotten with its directory"


def test_models_limits_the_names_served(tmp_path: Path) -> None:
    for name in ("kept", "left-out"):
        copy_shipped(tmp_path, name)
    runtime = ModelRuntime(Settings(model_root=tmp_path, models=("kept",)))
    runtime.load_all()
    copy_shipped(tmp_path, "new")
    runtime.sync()
    assert set(runtime.served()) == {"kept"}

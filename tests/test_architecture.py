"""The code's own rules: models are data (the registry), kinds live in their tasks, docs are generated (style: test_style.py)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from benchmarks.launch import ROOT
from service.core.catalog import RECIPES
from service.core.config import settings_table

pytestmark = pytest.mark.unit

MAX_FUNCTION_LINES = 60
# Where a shipped model may be named: its recipe line and its trainer module. training/datasets.py holds the
# loaders of the public datasets (Keras' boston_housing among them), which are named after the data.
MAY_NAME_MODELS = {"service/core/catalog.py", "training/datasets.py", *(f"{e.trainer.replace('.', '/')}.py" for e in RECIPES.values())}


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def test_no_module_outside_the_recipes_and_trainers_names_a_model() -> None:
    """Models are data: the service, the batch scorer, redeploy and the kind trainers serve any name the registry holds."""
    names = [*RECIPES, *(f"/{e.endpoint}" for e in RECIPES.values())]
    pattern = re.compile("|".join(re.escape(n) for n in names))
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in python_files("service", "training")
        if str(path.relative_to(ROOT)) not in MAY_NAME_MODELS
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders, "model names outside the recipes and trainers:\n" + "\n".join(offenders)


def test_functions_are_short() -> None:
    long = []
    for path in python_files("service", "training", "benchmarks"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_the_settings_table_is_generated_from_settings() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert settings_table() in page, "docs/configuration.md is stale: run `python -m service.core.config docs/configuration.md`"
    for copy in ("README.md", "deploy/README.md"):
        assert "| `MODELSERVE_" not in (ROOT / copy).read_text(), f"{copy} links to docs/configuration.md instead of copying its table"

"""The code's own rules: model kinds live in the catalog and their tasks, functions are short, docs are generated (style: test_style.py)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from benchmarks.launch import ROOT
from service.core.catalog import CATALOG
from service.core.config import settings_table

pytestmark = pytest.mark.unit

MAX_FUNCTION_LINES = 60
# Where a model may be named: its catalog line and its trainer module. training/datasets.py holds the
# loaders of the public datasets (Keras' boston_housing among them), which are named after the data.
MAY_NAME_MODELS = {"service/core/catalog.py", "training/datasets.py", *(f"{e.trainer.replace('.', '/')}.py" for e in CATALOG.values())}


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def test_no_module_outside_the_catalog_and_trainers_names_a_model() -> None:
    names = [*CATALOG, *(f"/{e.endpoint}" for e in CATALOG.values())]
    pattern = re.compile("|".join(re.escape(n) for n in names))
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in python_files("service", "training")
        if str(path.relative_to(ROOT)) not in MAY_NAME_MODELS
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders, "model names outside the catalog and trainers:\n" + "\n".join(offenders)


def test_functions_are_short() -> None:
    long = []
    for path in python_files("service", "training", "benchmarks"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_readme_settings_table_is_generated_from_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    assert settings_table() in readme, "README's settings table is stale: paste `python -m service.core.config` into it"
    deploy = (ROOT / "deploy" / "README.md").read_text()
    assert "| `MODELSERVE_" not in deploy, "deploy/README.md links to the README's table instead of copying it"

"""`bentoml build` on the project: the bento carries the registry and serving requirements, no TensorFlow."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from benchmarks.launch import BENTOML, ROOT

pytestmark = pytest.mark.integration

PLAYGROUND_FILES = sorted((ROOT / "service" / "http" / "static").iterdir())


def test_wheel_carries_the_playground_page(tmp_path: Path) -> None:
    """The serving image installs the project as a wheel (deploy/Dockerfile): the page's files must be package data."""
    src = tmp_path / "src"  # a copy, as deploy/build-image.sh makes: the build leaves nothing in the checkout
    shutil.copytree(ROOT / "service", src / "service", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(tmp_path), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = tmp_path.glob("modelserve-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        for path in PLAYGROUND_FILES:
            assert archive.read(f"service/http/static/{path.name}") == path.read_bytes()


def _names(requirements: list[str]) -> dict[str, str]:
    """name -> full requirement line, for lines such as 'pillow==13.0.0; marker'."""
    return {re.split(r"[=<>;\[ ]", line, maxsplit=1)[0].lower(): line.replace('"', "'") for line in requirements}


def test_bento_requirements_match_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    expected = _names(project["dependencies"] + project["optional-dependencies"]["serve"])
    lines = [
        line.strip() for line in (ROOT / "requirements" / "serve.txt").read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    assert _names(lines) == {k: v for k, v in expected.items()}, "requirements/serve.txt must list exactly the serve extra"


def test_service_never_imports_tensorflow() -> None:
    for path in (ROOT / "service").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(tensorflow|keras|tf2onnx)\b", text, re.MULTILINE), path


def test_bentoml_build(tmp_path: Path) -> None:
    env = os.environ | {"BENTOML_HOME": str(tmp_path / "bentoml")}
    build = subprocess.run([str(BENTOML), "build", "--output", "tag"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout + build.stderr
    bentos = list((tmp_path / "bentoml" / "bentos" / "modelserve").glob("*/"))
    bentos = [b for b in bentos if (b / "bento.yaml").is_file()]
    assert len(bentos) == 1
    src = bentos[0] / "src"
    for name in ("image_classifier", "imdb_sentiment", "boston_housing"):
        current = (src / "models" / name / "CURRENT").read_text().strip()
        assert (src / "models" / name / current / "model.onnx").is_file()
    assert (src / "service" / "http" / "service.py").is_file() and (src / "service" / "core" / "tasks").is_dir()
    assert {p.name for p in (src / "service" / "http" / "static").iterdir()} == {p.name for p in PLAYGROUND_FILES}, "the playground page"
    assert not (src / "training").exists() and not (src / "service" / "batch").exists(), "the bento carries what serving needs, no more"
    requirements = "\n".join(p.read_text() for p in (bentos[0] / "env" / "python").rglob("requirements*.txt"))
    assert "onnxruntime" in requirements and "bentoml" in requirements
    assert "tensorflow" not in requirements.lower() and "keras" not in requirements.lower()

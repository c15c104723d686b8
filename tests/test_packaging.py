"""`bentoml build` on the project: the bento carries the registry and serving requirements, no TensorFlow."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import packages_distributions
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
    assert (src / "service" / "grpc" / "inference_pb2_grpc.py").is_file(), "the gRPC server and its stubs (service.py imports them)"
    assert {p.name for p in (src / "service" / "http" / "static").iterdir()} == {p.name for p in PLAYGROUND_FILES}, "the playground page"
    assert not (src / "training").exists() and not (src / "service" / "batch").exists(), "the bento carries what serving needs, no more"
    requirements = "\n".join(p.read_text() for p in (bentos[0] / "env" / "python").rglob("requirements*.txt"))
    assert "onnxruntime" in requirements and "bentoml" in requirements
    assert "tensorflow" not in requirements.lower() and "keras" not in requirements.lower()


# Which extras must declare what a file imports, by where the file lives (first match wins); the base dependencies count for all.
INSTALLS = (
    ("service/grpc/generate.py", ("dev",)),  # a developer's tool: regenerates the checked-in stubs
    ("service/core/prediction_log.py", ("batch",)),  # the optional prediction log writes Parquet: it asks for the batch extra
    ("service/batch/spark", ("spark",)),
    ("service/batch/", ("batch",)),
    ("service/", ("serve", "serve-cpu")),  # the GPU and the CPU serving installs
    ("training/", ("train",)),
)
SAME_MODULE = {"onnxruntime-gpu": "onnxruntime"}  # the GPU wheel installs the module the CPU wheel does


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(extra: str, project: dict) -> dict[str, str]:
    """normalised distribution name -> requirement, for the base dependencies plus `extra` and the extras it names."""
    lines = list(project["dependencies"])
    pending, seen = [extra], set()
    while pending:
        name = pending.pop()
        seen.add(name)
        for line in project["optional-dependencies"][name]:
            own = re.fullmatch(r"modelserve\[([^\]]+)\]", line.strip())
            if own:
                pending += [e for e in own.group(1).split(",") if e not in seen]
            else:
                lines.append(line)
    return {_normal(re.split(r"[=<>;\[ ]", line, maxsplit=1)[0]): line for line in lines}


def third_party_imports(path: Path) -> set[str]:
    """Top-level names of the absolute imports in one file (in functions too) that are neither standard library nor this project."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("__future__", "service", "training")}


def test_every_third_party_import_is_declared_pinned_in_the_extra_that_installs_it() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    providers = packages_distributions()  # import name -> the installed distributions that provide it
    missing, unpinned, checked = [], [], 0
    for path in sorted([*(ROOT / "service").rglob("*.py"), *(ROOT / "training").rglob("*.py")]):
        where = path.relative_to(ROOT).as_posix()
        extras = next(extras for prefix, extras in INSTALLS if where.startswith(prefix))
        for module in sorted(third_party_imports(path)):
            assert module in providers, f"{where} imports {module}, which no installed distribution provides"
            wanted = {_normal(SAME_MODULE.get(_normal(d), d)) for d in providers[module]} | {_normal(d) for d in providers[module]}
            for extra in extras:
                declared = _declared(extra, project)
                found = [declared[d] for d in wanted if d in declared]
                checked += 1
                if not found:
                    missing.append(f"{where}: {module} (distribution {'/'.join(providers[module])}) not in [{extra}]")
                unpinned += [f"{where}: {line}" for line in found if "==" not in line]
    assert checked > 50 and not missing, "imports not declared in pyproject.toml:\n" + "\n".join(missing)
    assert not unpinned, "declared without an exact version:\n" + "\n".join(unpinned)


def test_the_import_scan_sees_imports_in_functions_and_from_forms(tmp_path: Path) -> None:
    source = tmp_path / "module.py"
    source.write_text(
        "import os\nimport numpy.linalg\nfrom PIL import Image\n\ndef f():\n    import psutil\n    from . import sibling\n    from service.core import cpu\n"
    )
    assert third_party_imports(source) == {"numpy", "PIL", "psutil"}

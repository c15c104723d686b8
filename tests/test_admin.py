"""The admin routes (service/http/admin.py) in this process: httpx over ASGI, a real runtime over a small registry.

The registry is a copy of the shipped tabular model (two versions, a few hundred KB),
served by a real ModelRuntime with onnxruntime sessions; what BentoML would provide
(the service instance holding the runtime and the worker group) is that runtime and,
where a test says so, a worker group in a temporary directory. Reloads across worker
processes are tested on a real server in tests/test_redeploy.py and tests/faults.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import bentoml
import httpx
import pytest
from bentoml.exceptions import BentoMLException
from starlette.applications import Starlette

from service.core.catalog import RECIPES
from service.core.config import Settings
from service.core.registry import CURRENT_FILE, Registry
from service.core.runtime import ModelRuntime
from service.core.workers import WorkerGroup
from service.http import admin
from tests.conftest import SHIPPED_MODELS

pytestmark = pytest.mark.unit

TOKEN = "unit-admin-token"
ADMIN = {"authorization": f"Bearer {TOKEN}"}
NAME = next(name for name, recipe in RECIPES.items() if recipe.task.predicts_value)  # the small tabular model


@pytest.fixture()
def registry(tmp_path: Path) -> Registry:
    for version in ("1", "2"):  # two versions, whatever else models/ ships
        shutil.copytree(SHIPPED_MODELS / NAME / version, tmp_path / NAME / version)
    registry = Registry(tmp_path)
    registry.promote(NAME, 1)
    return registry


@pytest.fixture()
def service(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """What bentoml.get_current_service() gives the routes in a worker: the instance with its runtime (one worker)."""
    runtime = ModelRuntime(Settings(model_root=registry.root, admin_token=TOKEN))
    runtime.load_all()
    instance = SimpleNamespace(runtime=runtime, workers=None)
    monkeypatch.setattr(bentoml, "get_current_service", lambda: instance)
    return instance


class AdminClient:
    """httpx's client over ASGI (no socket), called synchronously: one event loop per request, as a test needs no more."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    def request(self, method: str, url: str, **options: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://admin") as client:
                return await client.request(method, url, **options)

        return asyncio.run(send())

    def get(self, url: str, **options: Any) -> httpx.Response:
        return self.request("GET", url, **options)

    def post(self, url: str, **options: Any) -> httpx.Response:
        return self.request("POST", url, **options)


@pytest.fixture()
def client(service: SimpleNamespace) -> AdminClient:
    return AdminClient(admin.admin_app(service.runtime.settings))


def reload(client: AdminClient, body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    return client.post("/admin/reload", json=body if body is not None else {"model": NAME}, headers=ADMIN if headers is None else headers)


def candidate(client: AdminClient, **body: Any) -> httpx.Response:
    return client.post("/admin/candidate", json={"model": NAME, **body}, headers=ADMIN)


# ---------------------------------------------------------------- GET /models


def test_models_lists_what_is_served(client: AdminClient) -> None:
    listed = client.get("/models").json()
    (model,) = listed["models"]
    assert (model["name"], model["version"], model["endpoint"]) == (NAME, 1, f"/{RECIPES[NAME].endpoint}")
    assert model["candidate"] is None and listed["refused_reloads"] == {} and listed["workers"] == []


def test_models_answers_503_while_the_models_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def loading() -> Any:
        raise BentoMLException("service isn't instantiated yet")

    monkeypatch.setattr(bentoml, "get_current_service", loading)
    client = AdminClient(admin.admin_app(Settings(admin_token=TOKEN)))
    assert client.get("/models").status_code == 503
    assert reload(client).status_code == 503


# ---------------------------------------------------------------- who may call the admin API


def test_the_admin_api_is_off_without_a_token(service: SimpleNamespace) -> None:
    answer = reload(AdminClient(admin.admin_app(Settings())))
    assert answer.status_code == 403 and "MODELSERVE_ADMIN_TOKEN" in answer.json()["error"]


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN + "x"}], ids=["none", "wrong", "bare"])
def test_a_missing_or_wrong_token_gets_401(client: AdminClient, headers: dict[str, str]) -> None:
    answer = reload(client, headers=headers)
    assert answer.status_code == 401 and "admin token" in answer.json()["error"]
    assert candidate(client, clear=True).status_code == 200, "the right token still works"


# ---------------------------------------------------------------- POST /admin/reload


def test_reload_swaps_in_what_current_names(client: AdminClient, service: SimpleNamespace, registry: Registry) -> None:
    assert reload(client).json()["results"] == [{"model": NAME, "status": "unchanged", "version": 1}]
    registry.promote(NAME, 2)
    answer = reload(client, {})
    assert answer.status_code == 200, answer.text
    (result,) = answer.json()["results"]
    assert (result["status"], result["previous_version"], result["version"]) == ("reloaded", 1, 2)
    assert answer.json()["workers"] == {"expected": 1, "confirmed": 1}
    assert service.runtime.get(NAME).version == 2


def test_a_reload_that_cannot_be_served_is_refused_and_the_old_version_serves(client: AdminClient, registry: Registry) -> None:
    (registry.root / NAME / CURRENT_FILE).write_text("7\n")
    answer = reload(client)
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"].startswith(f"reload of {NAME} refused, v1 keeps serving") and answer.json()["served_version"] == 1
    assert NAME in client.get("/models").json()["refused_reloads"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "invalid JSON body"),
        (b"[1, 2]", 400, 'send {"model": NAME} or {}'),
        (b'{"model": 3}', 400, 'send {"model": NAME} or {}'),
        (b'{"model": "nope"}', 404, "not served here: ['nope']"),
    ],
)
def test_reload_requests_that_make_no_sense_say_why(client: AdminClient, body: bytes, status: int, message: str) -> None:
    answer = client.post("/admin/reload", content=body, headers=ADMIN | {"content-type": "application/json"})
    assert answer.status_code == status and message in answer.json()["error"]


def test_an_empty_body_reloads_every_model(client: AdminClient) -> None:
    answer = client.post("/admin/reload", content=b"", headers=ADMIN)
    assert answer.status_code == 200 and [r["model"] for r in answer.json()["results"]] == [NAME]


def test_workers_that_do_not_confirm_get_202(
    client: AdminClient, service: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service.workers = WorkerGroup(expected=2, directory=tmp_path / "workers")  # no other worker will answer
    monkeypatch.setattr(admin, "PEER_WAIT_S", 0.2)
    answer = reload(client)
    assert answer.status_code == 202 and "1 did not confirm within 0.2 s" in answer.json()["warning"]
    assert answer.json()["workers"]["expected"] == 2 and answer.json()["workers"]["confirmed"] == 1


# ---------------------------------------------------------------- POST /admin/candidate


def test_a_canary_is_set_followed_and_cleared(client: AdminClient, service: SimpleNamespace, registry: Registry) -> None:
    answer = candidate(client, version=2, mode="canary", percent=25)
    assert answer.status_code == 200, answer.text
    assert {k: answer.json()[k] for k in ("model", "status", "version", "mode", "percent")} == {
        "model": NAME,
        "status": "candidate",
        "version": 2,
        "mode": "canary",
        "percent": 25.0,
    }
    assert registry.candidate(NAME).version == 2 and service.runtime.candidate(NAME).model.version == 2
    assert client.get("/models").json()["models"][0]["candidate"]["mode"] == "canary"
    answer = candidate(client, clear=True)
    assert answer.json() == {"model": NAME, "status": "no candidate"}
    assert registry.candidate(NAME) is None and service.runtime.candidate(NAME) is None


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"version": 2, "mode": "canary", "percent": 0}, 400, "a canary's percent must be in (0, 100]"),
        ({"version": 2, "mode": "blue-green", "percent": 5}, 400, "mode must be one of"),
        ({"version": "2", "mode": "shadow"}, 400, "version must be an integer"),
        ({"version": 2, "mode": "shadow", "percent": True}, 400, "percent a number"),
        ({"version": 9, "mode": "shadow"}, 409, "no version 9 (have [1, 2])"),
        ({"version": 1, "mode": "shadow"}, 409, "is the version CURRENT serves"),
    ],
)
def test_candidates_that_cannot_be_served_say_why(
    client: AdminClient, registry: Registry, body: dict[str, Any], status: int, message: str
) -> None:
    answer = candidate(client, **body)
    assert answer.status_code == status and message in answer.json()["error"], answer.text
    assert registry.candidate(NAME) is None, "nothing is left pointing at a refused candidate"


def test_a_candidate_request_for_an_unknown_model_is_404(client: AdminClient) -> None:
    answer = client.post("/admin/candidate", json={"model": "nope", "clear": True}, headers=ADMIN)
    assert answer.status_code == 404 and "not served here: 'nope'" in answer.json()["error"]
    assert client.post("/admin/candidate", json=["x"], headers=ADMIN).status_code == 400

"""A model the server does not serve (MODELSERVE_MODELS, or a registry without it): 404 naming what is served, on every route.

The friendly endpoints exist for every model of the catalog whether or not it is served;
they answered 500 with a KeyError for a model that was not.
"""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from tests.faults.faultlib import HOUSE
from tests.servers import ServerSpec

pytestmark = pytest.mark.integration

TOKEN = "unserved-token"
SERVER = ServerSpec(env={"MODELSERVE_MODELS": "boston_housing", "MODELSERVE_ADMIN_TOKEN": TOKEN})
CAT = (Path(__file__).parent / "fixtures" / "cat.jpg").read_bytes()
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
V2_TEXT = {"inputs": [{"name": "texts", "datatype": "BYTES", "shape": [1], "data": ["a fine film"]}]}
CALLS = {
    "friendly JSON": ("POST", "/sentiment", {"json": {"texts": ["a fine film"]}}),
    "friendly multipart": ("POST", "/classify_image", {"files": [("images", ("cat.jpg", CAT, "image/jpeg"))]}),
    "friendly base64": ("POST", "/classify_image", {"json": {"images": [base64.b64encode(CAT).decode()]}}),
    "v2 infer": ("POST", "/v2/models/imdb_sentiment/infer", {"json": V2_TEXT}),
    "v2 infer of a version": ("POST", "/v2/models/imdb_sentiment/versions/1/infer", {"json": V2_TEXT}),
    "v2 metadata": ("GET", "/v2/models/imdb_sentiment", {}),
    "v2 ready": ("GET", "/v2/models/imdb_sentiment/ready", {}),
    "admin reload": ("POST", "/admin/reload", {"json": {"model": "imdb_sentiment"}, "headers": ADMIN}),
    "admin candidate": (
        "POST",
        "/admin/candidate",
        {"json": {"model": "imdb_sentiment", "version": 1, "mode": "shadow"}, "headers": ADMIN},
    ),
    "playground plot": ("GET", "/models/imdb_sentiment/versions/1/plots/history.png", {}),
}


@pytest.mark.parametrize("call", CALLS, ids=list(CALLS))
def test_a_model_not_served_is_a_404_that_names_what_is(client: httpx.Client, call: str) -> None:
    method, path, kwargs = CALLS[call]
    response = client.request(method, path, **kwargs)
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert "not served" in error and "boston_housing" in error, error


def test_the_served_model_answers_and_the_models_list_names_only_it(client: httpx.Client) -> None:
    answer = client.post("/predict_price", json={"rows": [HOUSE]})
    assert answer.status_code == 200 and answer.json()[0]["model"] == "boston_housing"
    assert [m["name"] for m in client.get("/models").json()["models"]] == ["boston_housing"]

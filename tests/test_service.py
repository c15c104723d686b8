"""The HTTP service, as a client sees it: a real `bentoml serve` on the shipped models."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from benchmarks.launch import ROOT, Server
from service.core.cpu import cpu_report
from service.core.registry import Registry
from service.core.runtime import load_model
from tests.generate import image_bytes
from tests.servers import ServerSpec
from training.datasets import BOSTON_FEATURES

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parent / "fixtures"
CAT, DOG = (FIXTURES / "cat.jpg").read_bytes(), (FIXTURES / "dog.jpg").read_bytes()
POSITIVE = "One of the best films I have seen in years: moving, funny and beautifully acted. I loved it."
NEGATIVE = "A boring, badly written mess. The acting was awful and I wanted my two hours back."
HOUSE = {
    "CRIM": 0.06,
    "ZN": 0.0,
    "INDUS": 2.46,
    "CHAS": 0,
    "NOX": 0.488,
    "RM": 7.8,
    "AGE": 53.6,
    "DIS": 3.2,
    "RAD": 3,
    "TAX": 193,
    "PTRATIO": 17.8,
    "B": 392.6,
    "LSTAT": 3.0,
}
SERVER = ServerSpec(
    env={
        "MODELSERVE_MAX_REQUEST_BYTES": str(3_000_000),
        "MODELSERVE_MAX_IMAGE_PIXELS": str(20_000_000),
        "MODELSERVE_MAX_ITEMS": "16",
        "MODELSERVE_MAX_TEXT_CHARS": "20000",
    }
)


def upload(client: httpx.Client, *images: bytes, names: tuple[str, ...] = ()) -> httpx.Response:
    files = [("images", (names[i] if i < len(names) else f"image{i}", data, "application/octet-stream")) for i, data in enumerate(images)]
    return client.post("/classify_image", files=files)


def error_of(response: httpx.Response) -> str:
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    return body["error"]


# ---------------------------------------------------------------- health, docs, models


def test_the_server_counts_what_it_answered_by_route_and_status(server: Server, client: httpx.Client) -> None:
    """What tests/conftest.py reads when a server stops, to fail a module whose servers answered an unexpected 5xx."""
    before = server.answered()
    assert client.get("/no/such/route").status_code == 404
    assert client.post("/predict_price", json={"rows": [HOUSE]}).status_code == 200
    after = server.answered()
    assert after[("/no/such/route", 404)] - before[("/no/such/route", 404)] == 1
    assert after[("/predict_price", 200)] - before[("/predict_price", 200)] == 1


def test_health_metrics_and_docs(client: httpx.Client) -> None:
    assert client.get("/readyz").status_code == 200
    assert client.get("/livez").status_code == 200
    spec = client.get("/docs.json").json()
    assert {"/classify_image", "/sentiment", "/predict_price"} <= set(spec["paths"])
    client.post("/sentiment", json={"texts": [POSITIVE]})
    metrics = client.get("/metrics").text
    assert "bentoml_service_request_total" in metrics or "request_total" in metrics


def test_models_reports_versions_metrics_and_real_providers(client: httpx.Client) -> None:
    body = client.get("/models").json()
    served = {m["name"]: m for m in body["models"]}
    registry = Registry(ROOT / "models")
    assert set(served) == {"image_classifier", "imdb_sentiment", "boston_housing"}
    for name, model in served.items():
        assert model["version"] == registry.current_version(name)
        assert model["providers"] == ["CPUExecutionProvider"], "no GPU here: CPU, and nothing asked for CUDA"
        assert model["inputs"] and model["metrics"]["test"]
    assert served["image_classifier"]["labels"] == ["cats", "dogs"]
    image = served["image_classifier"]["model_file"]
    assert image["file"] == "model.int8.onnx" and image["precision"] == "int8", f"the CPU runs the INT8 file checked here: {image}"
    assert image["int8_check"]["passed"] and image["cpu_int8_kernels"] == cpu_report()["int8_kernels"] == body["cpu"]["int8_kernels"]
    assert served["imdb_sentiment"]["model_file"] == {"file": "model.onnx", "precision": "fp32"}
    assert body["gpus"] == 0


def test_startup_log_has_no_errors(server: Server) -> None:
    log = server.log()
    assert "loaded image_classifier" in log
    assert " ERROR " not in log and "[ERROR]" not in log, log[-2000:]


# ---------------------------------------------------------------- predictions


def test_sentiment_single_and_many(client: httpx.Client) -> None:
    one = client.post("/sentiment", json={"texts": [POSITIVE]})
    assert one.status_code == 200
    assert one.json()[0]["label"] == "positive" and one.json()[0]["probability_positive"] > 0.8
    many = client.post("/sentiment", json={"texts": [POSITIVE, NEGATIVE, POSITIVE]}).json()
    assert [a["label"] for a in many] == ["positive", "negative", "positive"]
    assert all(a["model"] == "imdb_sentiment" and isinstance(a["version"], int) for a in many)


def test_sentiment_equals_the_runtime_in_process(client: httpx.Client) -> None:
    model = load_model(Registry(ROOT / "models").current("imdb_sentiment"), ["CPUExecutionProvider"])
    expected = model.predict([POSITIVE, NEGATIVE])
    actual = client.post("/sentiment", json={"texts": [POSITIVE, NEGATIVE]}).json()
    for a, e in zip(actual, expected):
        assert a["label"] == e["label"] and abs(a["probability_positive"] - e["probability_positive"]) < 1e-6


def test_price_from_named_features_and_lists(client: httpx.Client) -> None:
    as_list = [HOUSE[f] for f in BOSTON_FEATURES]
    lower_case = {k.lower(): v for k, v in HOUSE.items()}
    poor = HOUSE | {"CRIM": 15.0, "RM": 5.0, "LSTAT": 30.0, "NOX": 0.7}
    response = client.post("/predict_price", json={"rows": [HOUSE, as_list, lower_case, poor]})
    assert response.status_code == 200
    prices = [a["price"] for a in response.json()]
    assert prices[0] == pytest.approx(prices[1]) == pytest.approx(prices[2])
    assert 25 < prices[0] < 55, "a large, low-crime house is expensive"
    assert prices[3] < prices[0] - 10, "a small house in a poor, polluted area is cheaper"
    assert response.json()[0]["unit"] == "$1000s"


def test_classify_real_photos(client: httpx.Client) -> None:
    response = upload(client, CAT, DOG, names=("cat.jpg", "dog.jpg"))
    assert response.status_code == 200, response.text
    cat, dog = response.json()
    assert cat["label"] == "cats" and dog["label"] == "dogs"
    assert set(cat["probabilities"]) == {"cats", "dogs"}
    assert sum(cat["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert cat["score"] == max(cat["probabilities"].values())


def test_classify_base64_json_matches_multipart(client: httpx.Client) -> None:
    multipart = upload(client, CAT).json()[0]
    plain = client.post("/classify_image", json={"images": [base64.b64encode(CAT).decode()]}).json()[0]
    data_url = client.post("/classify_image", json={"images": ["data:image/jpeg;base64," + base64.b64encode(CAT).decode()]}).json()[0]
    assert multipart["probabilities"] == pytest.approx(plain["probabilities"], abs=1e-6) == data_url["probabilities"]


def _cat_in(mode: str, fmt: str) -> bytes:
    image = Image.open(FIXTURES / "cat.jpg")
    if mode == "RGBA":
        image = image.convert("RGBA")
    elif mode == "CMYK":
        image = image.convert("CMYK")
    elif mode == "L":
        image = image.convert("L")
    return image_bytes(image, fmt)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("RGB", "PNG"), ("RGB", "WEBP"), ("RGB", "BMP"), ("RGB", "GIF"), ("L", "JPEG"), ("RGBA", "PNG"), ("CMYK", "JPEG")],
)
def test_every_format_and_mode_is_classified(client: httpx.Client, mode: str, fmt: str) -> None:
    response = upload(client, _cat_in(mode, fmt))
    assert response.status_code == 200, response.text
    answer = response.json()[0]
    assert answer["label"] in ("cats", "dogs") and 0.0 <= answer["score"] <= 1.0
    if mode in ("RGB", "RGBA", "CMYK") and fmt != "GIF":  # GIF's 256 colours and grayscale may shift a close call
        assert answer["label"] == "cats"


def test_exif_rotation_is_honoured(client: httpx.Client) -> None:
    """The same photo stored rotated with an EXIF orientation tag is classified like the upright one."""
    upright = upload(client, CAT).json()[0]
    exif = Image.Exif()
    exif[0x0112] = 8  # stored rotated 90 degrees CW; viewers rotate it back
    rotated_bytes = image_bytes(Image.open(FIXTURES / "cat.jpg").transpose(Image.Transpose.ROTATE_270), "JPEG", exif=exif, quality=95)
    rotated = upload(client, rotated_bytes).json()[0]
    assert rotated["label"] == upright["label"]
    assert rotated["probabilities"]["cats"] == pytest.approx(upright["probabilities"]["cats"], abs=0.05)


# ---------------------------------------------------------------- bad input: 4xx with a message, server keeps serving


def _bomb() -> bytes:
    return image_bytes(Image.new("L", (6000, 6000)), "PNG")  # 36 Mpx in ~100 KB


BAD_IMAGES = [
    (b"", "images[0]: is empty"),
    (b"Just some text in a file called photo.jpg\n", "images[0]: is not a supported image"),
    (CAT[: len(CAT) // 2], "images[0]: is truncated or corrupt"),
    (CAT[:100], "images[0]: is truncated or corrupt"),
    (_bomb(), "pixels, more than the limit"),
]


@pytest.mark.parametrize(("data", "message"), BAD_IMAGES, ids=["zero-bytes", "text-file", "truncated", "header-only", "pixel-bomb"])
def test_bad_images_get_400(client: httpx.Client, data: bytes, message: str) -> None:
    response = upload(client, data)
    assert response.status_code == 400
    assert message in error_of(response)


def test_bad_image_is_named_by_position(client: httpx.Client) -> None:
    response = upload(client, CAT, b"garbage", DOG)
    assert response.status_code == 400 and error_of(response).startswith("images[1]:")


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/sentiment", {"texts": []}, 400, "texts: List should have at least 1 item"),
        ("/sentiment", {"texts": ["x"] * 17}, 400, "texts: List should have at most 16 items"),
        ("/sentiment", {"texts": [POSITIVE, "   "]}, 400, "texts[1]: is empty"),
        ("/sentiment", {"texts": [42]}, 400, "texts[0]: must be a string"),
        ("/sentiment", {"texts": [None]}, 400, "texts[0]: is missing"),
        ("/sentiment", {"texts": ["a" * 20_001]}, 400, "more than the limit of 20,000"),
        ("/sentiment", {"text": ["typo in the field name"]}, 400, "texts: Field required"),
        ("/predict_price", {"rows": []}, 400, "rows: List should have at least 1 item"),
        ("/predict_price", {"rows": [[1, 2, 3]]}, 400, "rows[0]: has 3 values, expected 13"),
        ("/predict_price", {"rows": [HOUSE | {"GARDEN": 1}]}, 400, "unknown features ['GARDEN']"),
        ("/predict_price", {"rows": [{k: v for k, v in HOUSE.items() if k != "RM"}]}, 400, "missing features ['RM']"),
        ("/predict_price", {"rows": [HOUSE | {"RM": "seven"}]}, 400, "feature RM must be a number"),
        ("/classify_image", {"images": []}, 400, "images: List should have at least 1 item"),
        ("/classify_image", {"images": ["not base64!"]}, 400, "images[0]: is not valid base64"),
    ],
)
def test_bad_json_input_gets_400(client: httpx.Client, path: str, body: object, status: int, message: str) -> None:
    response = client.post(path, json=body)
    assert response.status_code == status
    assert message in error_of(response)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_features_get_400(client: httpx.Client, literal: str) -> None:
    row = ", ".join(["1"] * 12 + [literal])
    response = client.post("/predict_price", content=f'{{"rows": [[{row}]]}}', headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "only finite numbers are accepted" in error_of(response)


def test_invalid_json_gets_400(client: httpx.Client) -> None:
    response = client.post("/sentiment", content=b'{"texts": ["unterminated', headers={"content-type": "application/json"})
    assert response.status_code == 400 and error_of(response).startswith("invalid JSON")


def test_wrong_content_type_gets_415(client: httpx.Client) -> None:
    response = client.post("/sentiment", content=json.dumps({"texts": [POSITIVE]}), headers={"content-type": "text/plain"})
    assert response.status_code == 415 and "application/json" in error_of(response)
    response = client.post("/predict_price", files={"rows": ("rows.csv", b"1,2,3")})
    assert response.status_code == 415


def test_huge_payload_gets_413(client: httpx.Client) -> None:
    response = upload(client, b"\xff" * 3_100_000)
    assert response.status_code == 413 and "over the limit" in error_of(response)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
        yield b'{"texts": ["'
        for _ in range(40):
            yield b"a" * 100_000
        yield b'"]}'

    response = client.post("/sentiment", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_server_still_serves_after_bad_input(client: httpx.Client, server: Server) -> None:
    assert client.post("/sentiment", json={"texts": [POSITIVE]}).status_code == 200
    assert upload(client, DOG).json()[0]["label"] == "dogs"
    assert server.process.poll() is None


# ---------------------------------------------------------------- concurrency


def test_concurrent_burst_has_no_5xx(server: Server) -> None:
    """64 clients at once, mixed endpoints, some requests bad: every answer is 200 or 4xx."""

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:

            async def one(i: int) -> int:
                kind = i % 4
                if kind == 0:
                    response = await client.post("/classify_image", files=[("images", ("cat.jpg", CAT if i % 8 else b"bad"))])
                elif kind == 1:
                    response = await client.post("/sentiment", json={"texts": [POSITIVE if i % 3 else ""]})
                elif kind == 2:
                    response = await client.post("/predict_price", json={"rows": [HOUSE]})
                else:
                    response = await client.post("/sentiment", json={"texts": [NEGATIVE, POSITIVE]})
                return response.status_code

            return await asyncio.gather(*(one(i) for i in range(256)))

    codes = asyncio.run(burst())
    assert not [c for c in codes if c >= 500], codes
    assert codes.count(200) > 150


def test_admin_api_is_off_without_a_token(client: httpx.Client) -> None:
    response = client.post("/admin/reload", json={})
    assert response.status_code == 403 and "MODELSERVE_ADMIN_TOKEN" in error_of(response)


def test_metrics_have_per_version_series(client: httpx.Client) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    assert client.post("/sentiment", json={"texts": [POSITIVE, NEGATIVE]}).status_code == 200
    assert client.post("/predict_price", json={"rows": [HOUSE]}).status_code == 200
    assert (
        client.post("/classify_image", files=[("images", ("cat.jpg", CAT)), ("images", ("bad.jpg", CAT[: len(CAT) // 2]))]).status_code
        == 400
    )
    samples = [s for family in text_string_to_metric_families(client.get("/metrics").text) for s in family.samples]

    def value(name: str, **labels: str) -> float:
        return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())

    text = {"model": "imdb_sentiment", "version": str(Registry(ROOT / "models").current_version("imdb_sentiment"))}
    assert value("modelserve_requests_total", outcome="ok", **text) >= 1
    assert value("modelserve_queue_seconds_count", **text) >= 1 and value("modelserve_compute_seconds_count", **text) >= 1
    assert value("modelserve_batch_size_count", **text) >= 1
    assert value("modelserve_predicted_labels_total", label="positive", **text) >= 1
    assert value("modelserve_predicted_labels_total", label="negative", **text) >= 1
    assert value("modelserve_predicted_probability_count", **text) >= 2
    assert value("modelserve_predicted_value_count", model="boston_housing") >= 1
    assert value("modelserve_requests_total", model="image_classifier", outcome="rejected") >= 1

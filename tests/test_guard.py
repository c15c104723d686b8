"""The request guard (service/http/guard.py) in this process: raw ASGI messages in, what the client would get out.

The guard sits in front of a tiny ASGI app that records what reached it. Each refusal
must say what was wrong, close the connection where the body could not be trusted,
and never reach the app; what passes must reach it byte for byte. The same cases over
real sockets are in tests/faults/test_fault_http.py (integration).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field, ValidationError

from service.core.config import Settings
from service.core.tasks import TextClassification
from service.core.tasks.friendly import friendly_api
from service.http.guard import MAX_DETAIL_ITEMS, MAX_ERROR_CHARS, MAX_RAW_ERROR_BYTES, RequestGuard
from tests.faults.test_fault_http import FILE_PART, MULTIPART_CASES, multipart

pytestmark = pytest.mark.unit

LIMIT = 1_000
CONTENT_TYPES = {
    "/sentiment": ("application/json",),
    "/classify_image": ("multipart/form-data", "application/json"),
    "/v2/": ("application/json", "application/octet-stream", ""),
}
FILE_FIELDS = {"/classify_image": ("images",)}


@dataclass
class Exchange:
    """What the client got, and what the app behind the guard saw."""

    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""
    app_body: bytes | None = None  # None: the request never reached the app
    received: int = 0  # how many messages the guard read from the client

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def closes(self) -> bool:
        return self.headers.get(b"connection") == b"close"


def app_answering(status: int = 200, body: bytes = b'{"ok": true}') -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        scope["app_body"] = b"".join(chunks)
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    return app


def exchange(
    path: str,
    headers: Sequence[tuple[str, str]],
    chunks: Sequence[bytes] = (b"",),
    *,
    method: str = "POST",
    app: Any = None,
    then_wait: bool = False,
    disconnect: bool = False,
    limit: int = LIMIT,
    max_files: int = 4,
) -> Exchange:
    """One request through the guard: `chunks` arrive as the body; then the client waits (`then_wait`) or goes away."""
    result = Exchange()
    guard = RequestGuard(
        app or app_answering(),
        max_request_bytes=limit,
        content_types=CONTENT_TYPES,
        file_fields=FILE_FIELDS,
        max_files=max_files,
        body_timeout_s=0.05,
    )
    scope: dict[str, Any] = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
    }
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1 or then_wait} for i, c in enumerate(chunks)]

    async def receive() -> dict[str, Any]:
        result.received += 1
        if messages:
            return messages.pop(0)
        if disconnect:
            return {"type": "http.disconnect"}
        await asyncio.sleep(3600)  # a client that sends nothing more
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            result.status, result.headers = message["status"], dict(message.get("headers", []))
        else:
            result.body += message.get("body", b"")

    asyncio.run(guard(scope, receive, send))
    result.app_body = scope.get("app_body")
    return result


JSON = ("content-type", "application/json")

# ---------------------------------------------------------------- what passes


def test_a_good_request_reaches_the_app_byte_for_byte() -> None:
    chunks = [b'{"texts": ', b'["a fine film"', b"]}"]
    answer = exchange("/sentiment", [JSON, ("content-length", str(len(b"".join(chunks))))], chunks)
    assert answer.status == 200 and answer.app_body == b"".join(chunks)
    answer = exchange("/sentiment", [JSON, ("transfer-encoding", "chunked")], chunks)
    assert answer.status == 200 and answer.app_body == b"".join(chunks), "chunked: no Content-Length"


def test_gets_and_other_protocols_pass_unchecked() -> None:
    assert exchange("/readyz", [], method="GET").status == 200
    assert exchange("/v2/models/x/infer", [], [b"{}"]).status == 200, "tritonclient sends no Content-Type"
    seen = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    asyncio.run(RequestGuard(app, max_request_bytes=1, content_types={})({"type": "lifespan"}, None, None))  # type: ignore[arg-type]
    assert seen == ["lifespan"]


# ---------------------------------------------------------------- framing and size


def test_content_length_with_transfer_encoding_is_refused_and_closed() -> None:
    answer = exchange("/sentiment", [JSON, ("content-length", "2"), ("transfer-encoding", "chunked")], [b"{}"])
    assert answer.status == 400 and "both Content-Length and Transfer-Encoding" in answer.json()["error"]
    assert answer.closes and answer.app_body is None


@pytest.mark.parametrize("length", ["12abc", "-1", "²"])
def test_an_invalid_content_length_is_refused(length: str) -> None:
    answer = exchange("/sentiment", [JSON, ("content-length", length)], [b"{}"])
    assert answer.status == 400 and "invalid Content-Length" in answer.json()["error"] and answer.closes


def test_a_declared_length_over_the_limit_is_refused_before_the_app_reads_it() -> None:
    answer = exchange("/sentiment", [JSON, ("content-length", str(50 * LIMIT))], [b"x" * 100] * 3, then_wait=True)
    assert answer.status == 413 and "50,000 bytes, over the limit of 1,000 bytes" in answer.json()["error"]
    assert answer.closes and answer.app_body is None


def test_a_client_expecting_100_continue_is_refused_without_reading() -> None:
    lines = [JSON, ("content-length", str(50 * LIMIT)), ("expect", "100-continue")]
    answer = exchange("/sentiment", lines, [b"x" * 100], then_wait=True)
    assert answer.status == 413 and answer.received == 0, "reading would invite the body in"


def test_a_body_is_counted_as_it_arrives_whatever_the_headers_say() -> None:
    answer = exchange("/sentiment", [JSON, ("transfer-encoding", "chunked")], [b"x" * 400] * 3)
    assert answer.status == 413 and "request body is larger, over the limit of 1,000 bytes" in answer.json()["error"]
    assert answer.app_body is None


def test_a_body_that_stops_arriving_gets_408_and_close() -> None:
    answer = exchange("/sentiment", [JSON, ("content-length", "100")], [b'{"texts": '], then_wait=True)
    assert answer.status == 408 and "MODELSERVE_BODY_TIMEOUT_S" in answer.json()["error"] and answer.closes


def test_a_client_that_goes_away_gets_nothing_and_the_app_is_not_called() -> None:
    answer = exchange("/sentiment", [JSON, ("content-length", "100")], [b'{"texts": '], then_wait=True, disconnect=True)
    assert answer.status == 0 and answer.app_body is None


# ---------------------------------------------------------------- content types


@pytest.mark.parametrize(
    ("path", "content_type", "accepted"),
    [
        ("/sentiment", "text/plain", "application/json"),
        ("/sentiment", None, "application/json"),
        ("/classify_image", "application/x-www-form-urlencoded", "multipart/form-data or application/json"),
        ("/v2/models/m/versions/2/infer", "text/csv", "application/json or application/octet-stream or none"),
    ],
)
def test_a_content_type_the_route_does_not_take_gets_415(path: str, content_type: str | None, accepted: str) -> None:
    answer = exchange(path, [("content-type", content_type)] if content_type else [], [b"{}"])
    assert answer.status == 415 and answer.json()["error"].endswith(f"is not accepted by {path}; send {accepted}")
    assert answer.app_body is None


def test_media_type_parameters_and_case_do_not_matter() -> None:
    assert exchange("/sentiment", [("content-type", "Application/JSON; charset=utf-8")], [b"{}"]).status == 200


# ---------------------------------------------------------------- multipart bodies


@pytest.mark.parametrize("case", list(MULTIPART_CASES))
def test_malformed_multipart_is_refused_with_what_is_wrong(case: str) -> None:
    content_type, body, message = MULTIPART_CASES[case]
    pieces = [body[i : i + 700] for i in range(0, len(body), 700)]
    answer = exchange("/classify_image", [("content-type", content_type)], pieces, limit=len(body), max_files=16)
    assert answer.status == 400 and message in answer.json()["error"], answer.body[:300]
    assert answer.app_body is None


def test_a_good_multipart_upload_reaches_the_app() -> None:
    body = multipart([(FILE_PART[0], "GIF89a tiny")])
    answer = exchange("/classify_image", [("content-type", "multipart/form-data; boundary=b0undary")], [body])
    assert answer.status == 200 and answer.app_body == body


# ---------------------------------------------------------------- 4xx bodies made readable


def bentoml_validation_body(texts: list[Any]) -> bytes:
    """The 400 body BentoML 1.4 sends for a request that fails pydantic validation (_bentoml_impl/server/app.py)."""
    item = friendly_api(TextClassification()).request_item(Settings(), lambda: None)
    model = type("Input", (BaseModel,), {"__annotations__": {"texts": Annotated[list[item], Field(min_length=1)]}})  # type: ignore[valid-type]
    with pytest.raises(ValidationError) as raised:
        model(texts=texts)
    exc = raised.value
    return json.dumps(
        {"error": f"{exc.error_count()} validation error for {exc.title}", "detail": exc.errors(include_context=False)}
    ).encode()


def test_validation_errors_say_which_item_is_wrong() -> None:
    app = app_answering(400, bentoml_validation_body(["fine", "   ", 42]))
    answer = exchange("/sentiment", [JSON], [b"{}"], app=app)
    body = answer.json()
    assert answer.status == 400 and body["error"] == "texts[1]: is empty; texts[2]: must be a string, got int"
    assert len(body["detail"]) == 2 and all("input" not in d for d in body["detail"]), "pydantic's detail kept, inputs not echoed"
    assert int(answer.headers[b"content-length"]) == len(answer.body)


def test_error_bodies_are_capped() -> None:
    many = bentoml_validation_body(["ok"] + [""] * 40)
    answer = exchange("/sentiment", [JSON], [b"{}"], app=app_answering(400, many))
    assert len(answer.json()["detail"]) == MAX_DETAIL_ITEMS and answer.json()["detail_omitted"] == 20
    huge = json.dumps([{"error": "unknown features " + "k" * 50_000}]).encode()  # BentoML wraps some errors in a one-item list
    error = exchange("/sentiment", [JSON], [b"{}"], app=app_answering(400, huge)).json()["error"]
    assert len(error) < MAX_ERROR_CHARS + 50 and error.endswith("more characters)")
    raw = exchange("/sentiment", [JSON], [b"{}"], app=app_answering(404, b"<html>" + b"x" * 10_000)).body
    assert len(raw) <= MAX_RAW_ERROR_BYTES + 10 and raw.endswith(b"... (cut)")


def test_successful_answers_are_not_touched() -> None:
    body = json.dumps([{"error": "x" * 5_000}]).encode()
    assert exchange("/sentiment", [JSON], [b"{}"], app=app_answering(200, body)).body == body

"""Hostile HTTP against a real `bentoml serve`: framing, sizes, slow clients, malformed multipart, huge error bodies.

Every case asserts the status and message the client sees, and the last test checks
that no answer in this module was a 5xx and that the server logged no error.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from benchmarks.launch import Server
from tests.faults.faultlib import ADMIN, HOUSE, TOKEN, log_problems, raw_exchange, slow_send, worker_pids
from tests.servers import ServerSpec

pytestmark = pytest.mark.integration

LIMIT = 1_000_000
HEADER_TIMEOUT_S = 2
BODY_TIMEOUT_S = 2
SERVER = ServerSpec(
    env={
        "MODELSERVE_MAX_REQUEST_BYTES": str(LIMIT),
        "MODELSERVE_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "MODELSERVE_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "MODELSERVE_MAX_ITEMS": "16",
        "MODELSERVE_ADMIN_TOKEN": TOKEN,
        "MODELSERVE_RELOAD_POLL_S": "0",
    }
)
CAT = (__import__("pathlib").Path(__file__).parent.parent / "fixtures" / "cat.jpg").read_bytes()
SEEN: list[int] = []  # every status this module's cases got


def port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def seen(status: int | None) -> int | None:
    if status is not None:
        SEEN.append(status)
    return status


def head(path: str, *lines: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: test\r\n" + "".join(f"{line}\r\n" for line in lines) + "\r\n").encode()


def chunked(data: bytes, size: int = 65536) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        piece = data[start : start + size]
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    yield b"0\r\n\r\n"


# ---------------------------------------------------------------- framing and size


def test_content_length_and_chunked_together_is_refused_and_nothing_is_buffered(server: Server) -> None:
    """Defect 1: Content-Length: 2 with a 6 MB chunked body was read in full past the 1 MB limit."""
    workers = [psutil.Process(pid) for pid in worker_pids(server)]
    before = sum(w.memory_info().rss for w in workers)
    body = b'{"texts": ["' + b"a" * 6_000_000 + b'"]}'
    answer = raw_exchange(
        port_of(server),
        head("/sentiment", "Content-Type: application/json", "Content-Length: 2", "Transfer-Encoding: chunked"),
        list(chunked(body)),
    )
    assert seen(answer.status) == 400
    # httptools (uvicorn's C parser) refuses the framing itself; h11 leaves it to the request guard.
    text = answer.body.decode(errors="replace")
    assert "both Content-Length and Transfer-Encoding" in text or "Invalid HTTP request" in text, text
    assert answer.closed
    grown = sum(w.memory_info().rss for w in workers) - before
    assert grown < 30_000_000, f"workers grew by {grown / 1e6:.0f} MB"


def test_chunked_body_is_counted_as_it_arrives(server: Server) -> None:
    body = b'{"texts": ["' + b"a" * 3 * LIMIT + b'"]}'
    answer = raw_exchange(
        port_of(server), head("/sentiment", "Content-Type: application/json", "Transfer-Encoding: chunked"), list(chunked(body))
    )
    assert seen(answer.status) == 413 and "over the limit of 1,000,000 bytes" in answer.json()["error"]


def test_declared_length_over_the_limit_is_refused_before_reading(server: Server) -> None:
    answer = raw_exchange(port_of(server), head("/sentiment", "Content-Type: application/json", f"Content-Length: {50 * LIMIT}"))
    assert seen(answer.status) == 413 and "50,000,000 bytes" in answer.json()["error"]
    assert answer.seconds < 10, "refused at once, not after reading (or waiting for) 50 MB"


def test_a_client_expecting_100_continue_gets_413_without_sending_the_body(server: Server) -> None:
    lines = ("Content-Type: application/json", f"Content-Length: {50 * LIMIT}", "Expect: 100-continue")
    answer = raw_exchange(port_of(server), head("/sentiment", *lines))
    assert seen(answer.status) == 413 and answer.seconds < 2, "no 100 Continue, no waiting for a body"


@pytest.mark.parametrize(
    "framing",
    [("Content-Length: 12abc",), ("Content-Length: 5", "Content-Length: 7"), ("Transfer-Encoding: gzip",), ("Content-Length: -1",)],
)
def test_malformed_framing_gets_400(server: Server, framing: tuple[str, ...]) -> None:
    answer = raw_exchange(port_of(server), head("/sentiment", "Content-Type: application/json", *framing), [b"{}"])
    assert seen(answer.status) == 400


# ---------------------------------------------------------------- slow and silent clients


def test_headers_sent_a_byte_at_a_time_are_cut_off(server: Server) -> None:
    """Defect 7: a socket sending its headers one byte a second was never closed."""
    answer = slow_send(port_of(server), b"GET /readyz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200, every_s=0.25, timeout=30)
    assert seen(answer.status) == 408 and "MODELSERVE_HEADER_TIMEOUT_S" in answer.body.decode()
    assert HEADER_TIMEOUT_S - 0.5 < answer.seconds < HEADER_TIMEOUT_S + 3


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(server: Server) -> None:
    answer = raw_exchange(port_of(server), b"", timeout=30)
    assert answer.status is None and answer.closed
    assert answer.seconds < HEADER_TIMEOUT_S + 3


def test_a_body_that_never_arrives_gets_408(server: Server) -> None:
    """Defect 7: Content-Length: 100 and no body held the connection for 120 s, then 504."""
    answer = raw_exchange(port_of(server), head("/sentiment", "Content-Type: application/json", "Content-Length: 100"), timeout=60)
    assert seen(answer.status) == 408 and "MODELSERVE_BODY_TIMEOUT_S" in answer.json()["error"]
    assert answer.seconds < BODY_TIMEOUT_S + 3 and answer.closed


def test_a_body_dripping_in_gets_408(server: Server) -> None:
    body = json.dumps({"texts": ["slow " * 40]}).encode()
    pieces = [body[i : i + 10] for i in range(0, len(body), 10)]
    answer = raw_exchange(
        port_of(server),
        head("/sentiment", "Content-Type: application/json", f"Content-Length: {len(body)}"),
        pieces,
        pause_s=0.3,
        timeout=60,
    )
    assert seen(answer.status) == 408
    assert answer.seconds < BODY_TIMEOUT_S + 3


def test_kept_alive_connections_still_work(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for pause in (0.0, 1.0, 0.2):
            time.sleep(pause)
            assert seen(http.post("/predict_price", json={"rows": [HOUSE]}).status_code) == 200


# ---------------------------------------------------------------- malformed multipart (defect 4)


def multipart(parts: list[tuple[str, str]], boundary: str = "b0undary") -> bytes:
    """Parts as (headers, content); the body with its closing boundary."""
    out = b"".join(f"--{boundary}\r\n{h}\r\n\r\n".encode() + c.encode("latin-1") + b"\r\n" for h, c in parts)
    return out + f"--{boundary}--\r\n".encode()


FILE_PART = ('Content-Disposition: form-data; name="images"; filename="cat.jpg"\r\nContent-Type: image/jpeg', CAT.decode("latin-1"))
MULTIPART_CASES = {
    "no boundary": ("multipart/form-data", multipart([FILE_PART]), "without a boundary"),
    "garbage body": ("multipart/form-data; boundary=b0undary", b"\x00\x01garbage" * 50, "invalid multipart body"),
    "unnamed part": (
        "multipart/form-data; boundary=b0undary",
        multipart([('Content-Disposition: form-data; filename="cat.jpg"', CAT.decode("latin-1"))]),
        "has no name",
    ),
    "10,000 parts": (
        "multipart/form-data; boundary=b0undary",
        multipart([('Content-Disposition: form-data; name="images"; filename="a"', "x")] * 10_000),
        "more than 16 files",
    ),
    "10,000 fields": (
        "multipart/form-data; boundary=b0undary",
        multipart([FILE_PART] + [(f'Content-Disposition: form-data; name="f{i}"', "v") for i in range(10_000)]),
        "more than 16 text fields",
    ),
    "text field named images": (
        "multipart/form-data; boundary=b0undary",
        multipart([('Content-Disposition: form-data; name="images"', "http://127.0.0.1:9/cat.jpg")]),
        "images: must be a file upload",
    ),
    "a file under another name": (
        "multipart/form-data; boundary=b0undary",
        multipart([FILE_PART, ('Content-Disposition: form-data; name="other"; filename="x.bin"', "\xff\xfe\x00binary")]),
        "'other' is a file",
    ),
    "no closing boundary": ("multipart/form-data; boundary=b0undary", multipart([FILE_PART])[:-12], "before its closing boundary"),
}


@pytest.mark.parametrize("case", list(MULTIPART_CASES))
def test_malformed_multipart_gets_400_with_a_message(client: httpx.Client, case: str) -> None:
    content_type, body, message = MULTIPART_CASES[case]
    response = client.post("/classify_image", content=body, headers={"content-type": content_type})
    assert seen(response.status_code) == 400, response.text[:300]
    assert message in response.json()["error"]


def test_a_good_upload_still_works(client: httpx.Client) -> None:
    response = client.post("/classify_image", files=[("images", ("cat.jpg", CAT, "image/jpeg"))])
    assert seen(response.status_code) == 200 and response.json()[0]["label"] == "cats"


# ---------------------------------------------------------------- bodies that make errors big or odd


def test_an_error_quoting_a_million_keys_stays_small(client: httpx.Client) -> None:
    """Defect 9: a row with 10^6 unknown keys got a 21.8 MB error body."""
    row = {f"k{i}": 1 for i in range(60_000)}  # 60,000 keys fit under this server's 1 MB limit
    response = client.post("/predict_price", json={"rows": [row] * 1})
    assert seen(response.status_code) == 400
    assert len(response.content) < 5_000, f"{len(response.content):,} bytes"
    assert "unknown features ['k0', 'k1', 'k10'" in response.json()["error"] and "59,980 more" in response.json()["error"]


def test_many_errors_list_at_most_twenty_details(client: httpx.Client) -> None:
    response = client.post("/sentiment", json={"texts": [""] * 16})
    assert seen(response.status_code) == 400
    body = response.json()
    assert len(body["detail"]) == 16 and "texts[15]: is empty" in body["error"]
    response = client.post("/predict_price", json={"rows": [[1, 2]] * 16 + [{"A": 1}] * 0})
    assert seen(response.status_code) == 400


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/predict_price", '{"rows": [[0.06, 1e300, 2.46, 0, 0.488, 7.8, 53.6, 3.2, 3, 193, 17.8, 392.6, 3.0]]}', None),
        (
            "/predict_price",
            '{"rows": [[0.06, 0, 2.46, 1e300, 0.488, 7.8, 53.6, 3.2, 3, 193, 17.8, 392.6, 3.0]]}',
            "too large for the model",
        ),
        ("/predict_price", '{"rows": [[-0.06, 0, 2.46, 0, 0.488, 7.8, 53.6, 3.2, 3, 193, 17.8, 392.6, 3.0]]}', "CRIM must be >= 0"),
        ("/predict_price", '{"rows": [[1e999, 0, 2.46, 0, 0.488, 7.8, 53.6, 3.2, 3, 193, 17.8, 392.6, 3.0]]}', "finite"),
        ("/predict_price", '{"rows": ' + "[" * 50_000 + "]" * 50_000 + "}", None),
        ("/sentiment", b'{"texts": ["\xff\xfe invalid utf-8"]}', None),
        ("/sentiment", '{"texts": ["a"]}' + " " * 10 + "trailing", "invalid JSON"),
        ("/classify_image", json.dumps({"images": ["http://127.0.0.1:9/cat.jpg"]}), "not valid base64"),
        ("/classify_image", json.dumps({"images": [base64.b64encode(b"GIF89a" + b"\x00" * 64).decode()]}), "images[0]"),
    ],
    ids=[
        "huge-log-feature",
        "huge-feature",
        "negative-log-feature",
        "overflowing-number",
        "deep-nesting",
        "bad-utf8",
        "trailing",
        "url",
        "bad-gif",
    ],
)
def test_odd_json_gets_4xx(client: httpx.Client, path: str, body: str | bytes, message: str | None) -> None:
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    status = seen(response.status_code)
    if message is None and status == 200:  # a huge log-scaled value is a (silly) valid input: a finite answer
        assert all(abs(a["price"]) < 1e30 for a in response.json())
        return
    assert status is not None and 400 <= status < 500, response.text[:300]
    if message:
        assert message in response.json()["error"]
    assert len(response.content) < 5_000


def test_admin_reload_reads_a_chunked_body(client: httpx.Client) -> None:
    """Defect 5: {"model": "nope"} sent chunked reloaded every model with 200."""

    def body() -> Iterator[bytes]:
        yield b'{"model": '
        yield b'"nope"}'

    response = client.post("/admin/reload", content=body(), headers={"content-type": "application/json", **ADMIN})
    assert seen(response.status_code) == 404 and "nope" in response.json()["error"]
    response = client.post(
        "/admin/reload", content=iter([b'{"model": "boston_housing"}']), headers={"content-type": "application/json", **ADMIN}
    )
    assert seen(response.status_code) == 200 and [r["model"] for r in response.json()["results"]] == ["boston_housing"]


# ---------------------------------------------------------------- the whole module


def test_no_5xx_and_no_server_error_in_the_log(server: Server, client: httpx.Client) -> None:
    assert SEEN and not [s for s in SEEN if s >= 500], sorted(set(SEEN))
    assert client.post("/predict_price", json={"rows": [HOUSE]}).status_code == 200
    problems = log_problems(server)
    assert not problems, "\n".join(problems[:20])
    assert "refused with 400" in server.log(), "the guard's refusals are logged, as one INFO line each"

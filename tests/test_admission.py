"""Admission: decoding work beyond the per-worker bound gets a fast 503 with Retry-After, and the server keeps serving."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.servers import ServerSpec
from tests.test_request_path import IMAGE_PIXELS, big_png, heaviest_request

pytestmark = pytest.mark.integration

# The bound admits one heaviest request at a time, so any two that overlap meet it.
SERVER = ServerSpec(
    env={
        "MODELSERVE_MAX_IMAGE_PIXELS": str(IMAGE_PIXELS),
        "MODELSERVE_MAX_REQUEST_PIXELS": str(2 * IMAGE_PIXELS),
        "MODELSERVE_MAX_PENDING_PIXELS": str(2 * IMAGE_PIXELS),
    }
)
AT_ONCE = 12


def test_work_beyond_the_pending_bound_gets_a_fast_503_with_retry_after(client: httpx.Client) -> None:
    png = big_png()
    with ThreadPoolExecutor(AT_ONCE) as pool:
        responses = list(pool.map(lambda _: heaviest_request(client, png), range(AT_ONCE)))
    codes = sorted(r.status_code for r in responses)
    assert set(codes) <= {200, 503} and 200 in codes, codes
    refused = [r for r in responses if r.status_code == 503]
    assert refused, f"{AT_ONCE} heaviest requests at once, the bound admitting one"
    assert all(r.headers.get("retry-after") == "1" and "retry shortly" in r.json()["error"] for r in refused)
    assert client.get("/readyz").status_code == 200
    assert heaviest_request(client, png).status_code == 200, "alone again, a request is admitted"

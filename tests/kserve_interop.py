"""The KServe Python SDK's v2 REST client against a running modelserve: an interop check run by hand.

Not collected by pytest: kserve 0.21.0 does not install beside the pinned stack (it needs
psutil<6, protobuf<7 and pandas<3; the dev extra pins psutil 7.2.2, pandas 3.1.1, and
TensorFlow/onnx bring protobuf 7), so it runs from a venv of its own and imports nothing
from this project:

    python3 -m venv /tmp/kserve && /tmp/kserve/bin/pip install kserve==0.21.0
    .venv/bin/bentoml serve --port 3000 &
    /tmp/kserve/bin/python tests/kserve_interop.py http://127.0.0.1:3000

It checks health and readiness, then infers on every model with JSON and with binary
tensors through `kserve.InferenceRESTClient`, and compares each answer with the friendly
endpoint's (labels equal, numbers within 1e-6). Exit status 0 when all agree.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

FIXTURES = Path(__file__).parent / "fixtures"
TEXTS = ["A moving, beautifully acted film.", "Dull and far too long."]
HOUSE = [0.06, 0.0, 2.46, 0, 0.488, 7.8, 53.6, 3.2, 3, 193, 17.8, 392.6, 3.0]
TOLERANCE = 1e-6


def tensor(name: str, array: np.ndarray, datatype: str, binary: bool) -> InferInput:
    infer_input = InferInput(name, list(array.shape), datatype)
    infer_input.set_data_from_numpy(array, binary_data=binary)
    return infer_input


async def check(url: str) -> list[str]:
    problems: list[str] = []
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    friendly = httpx.AsyncClient(base_url=url, timeout=60)
    if not (await client.is_server_live(url) and await client.is_server_ready(url)):
        problems.append("server not live or not ready")
    image = (FIXTURES / "cat.jpg").read_bytes()
    cases = [
        ("imdb_sentiment", "texts", np.array([t.encode() for t in TEXTS], dtype=object), "BYTES", "label", ("sentiment", {"json": {"texts": TEXTS}})),
        ("boston_housing", "rows", np.array([HOUSE], dtype=np.float32), "FP32", "price", ("predict_price", {"json": {"rows": [np.float32(HOUSE).tolist()]}})),
        ("image_classifier", "images", np.array([image], dtype=object), "BYTES", "label", ("classify_image", {"files": [("images", ("cat.jpg", image))]})),
    ]  # fmt: skip
    for model, name, array, datatype, field, (endpoint, request) in cases:
        if not await client.is_model_ready(url, model):
            problems.append(f"{model}: not ready")
        expected = [answer[field] for answer in (await friendly.post(f"/{endpoint}", **request)).json()]
        for binary in (True, False):
            if model == "image_classifier" and not binary:
                continue  # JSON BYTES must be UTF-8 in kserve's client; images in JSON are base64 (tests/test_v2.py)
            response = await client.infer(url, InferRequest(model, [tensor(name, array, datatype, binary)], request_id="interop"), model)
            got = response.outputs[[o.name for o in response.outputs].index(field)].as_numpy().reshape(-1).tolist()
            got = [g.decode() if isinstance(g, bytes) else g for g in got]
            same = got == expected if isinstance(expected[0], str) else np.allclose(got, expected, atol=TOLERANCE, rtol=0)
            print(f"{model:18} {'binary' if binary else 'JSON':6} {field}: {got} (friendly: {expected}) {'ok' if same else 'DIFFERENT'}")
            if not same or response.id != "interop":
                problems.append(f"{model} ({'binary' if binary else 'JSON'}): {got} != {expected} or id {response.id!r}")
    await client.close()
    await friendly.aclose()
    return problems


def main() -> int:
    problems = asyncio.run(check(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:3000"))
    for problem in problems:
        print("problem:", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

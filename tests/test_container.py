"""The CPU container image, as deployed: built by deploy/build-image.sh, run with docker.

Needs a Docker daemon (skipped, with the reason shown, where none answers: CI has
none). The build reuses docker's layer cache, so a second run takes seconds. Set
MODELSERVE_TEST_IMAGE=NAME to test an image already built instead of building one.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.containers import daemon_problem, docker
from benchmarks.launch import free_port
from service.core.registry import Registry
from service.grpc import inference_pb2 as pb
from service.grpc import inference_pb2_grpc as pb_grpc
from training.datasets import BOSTON_FEATURES

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
CAT = (ROOT / "tests" / "fixtures" / "cat.jpg").read_bytes()
IMAGE = os.environ.get("MODELSERVE_TEST_IMAGE", "")
BUILD_TIMEOUT_S = 840
READY_TIMEOUT_S = 120
POSITIVE = "One of the best films I have seen in years: moving, funny and beautifully acted. I loved it."
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


@dataclass
class Container:
    name: str
    url: str
    port: int
    served: dict[str, int]  # what the image should serve: the checkout's models/ and their CURRENT versions
    grpc_address: str  # the published MODELSERVE_GRPC_PORT (8081 in the image)

    def logs(self) -> str:
        result = docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def state(self) -> dict:
        return json.loads(docker("inspect", "--format", "{{json .State}}", self.name).stdout)


@pytest.fixture(scope="module")
def image() -> str:
    problem = daemon_problem()
    if problem:
        pytest.skip(f"container tests need a Docker daemon: {problem}")
    if IMAGE:
        return IMAGE
    started = time.monotonic()
    build = subprocess.run(
        ["bash", str(ROOT / "deploy" / "build-image.sh"), "--quiet", "--tag", "modelserve:cpu"],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, cwd=ROOT,
    )  # fmt: skip
    assert build.returncode == 0, f"deploy/build-image.sh failed:\n{build.stderr[-4000:]}"
    print(f"\nbuilt modelserve:cpu in {time.monotonic() - started:.0f}s:\n{build.stderr.strip()}")
    return "modelserve:cpu"


@pytest.fixture(scope="module")
def container(image: str) -> Iterator[Container]:
    registry = Registry(ROOT / "models")
    served = {name: registry.current_version(name) for name in registry.served_models()}
    if not served:
        pytest.skip("models/ has no model with a CURRENT version: the image has nothing to serve")
    name = f"modelserve-test-{uuid.uuid4().hex[:8]}"
    port, grpc_port = free_port(), free_port()
    publish = ["--publish", f"127.0.0.1:{port}:3000", "--publish", f"127.0.0.1:{grpc_port}:8081"]
    docker("run", "--detach", "--name", name, *publish, "--env", "MODELSERVE_MAX_ITEMS=16", image)
    box = Container(name, f"http://127.0.0.1:{port}", port, served, f"127.0.0.1:{grpc_port}")
    try:
        started = time.monotonic()
        while True:
            state = box.state()
            if not state["Running"]:
                pytest.fail(f"the container exited with {state['ExitCode']} before it was ready:\n{box.logs()[-3000:]}")
            try:
                if httpx.get(f"{box.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > READY_TIMEOUT_S:
                pytest.fail(f"not ready after {READY_TIMEOUT_S}s:\n{box.logs()[-3000:]}")
            time.sleep(0.3)
        print(f"\n{name}: docker run -> /readyz 200 in {time.monotonic() - started:.1f}s")
        yield box
    finally:
        docker("rm", "--force", "--volumes", name, check=False)


@pytest.fixture(scope="module")
def client(container: Container) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=container.url, timeout=60) as client:
        yield client


# ---------------------------------------------------------------- the image itself


def test_image_is_slim_non_root_and_checks_its_health(image: str) -> None:
    config = json.loads(docker("image", "inspect", "--format", "{{json .Config}}", image).stdout)
    assert config["User"] and not config["User"].startswith(("0", "root")), config["User"]
    assert config["Entrypoint"][:2] == ["bentoml", "serve"], "exec form: bentoml is PID 1 and gets SIGTERM"
    assert "/app/healthcheck.py" in " ".join(config["Healthcheck"]["Test"])
    probe = "import importlib.util as u; print(sorted(m for m in ('tensorflow', 'keras', 'tf2onnx', 'onnxruntime', 'bentoml') if u.find_spec(m)))"
    found = docker("run", "--rm", "--entrypoint", "python3", image, "-c", probe).stdout.strip()
    assert found == "['bentoml', 'onnxruntime']", f"serving packages only, no training stack: {found}"
    size_mb = int(docker("image", "inspect", "--format", "{{.Size}}", image).stdout) / 1e6
    assert size_mb < 1000, f"the CPU image is {size_mb:.0f} MB"


# ---------------------------------------------------------------- the running container


def test_ready_models_and_healthcheck(client: httpx.Client, container: Container) -> None:
    assert client.get("/readyz").status_code == 200
    assert client.get("/livez").status_code == 200
    body = client.get("/models").json()
    assert {m["name"]: m["version"] for m in body["models"]} == container.served, "serves the models/ it was built from"
    assert body["model_root"] == "/app/models"
    assert all(m["providers"] == ["CPUExecutionProvider"] for m in body["models"])
    assert body["gpus"] == 0
    health = docker("exec", container.name, "python3", "/app/healthcheck.py", check=False)
    assert health.returncode == 0, health.stderr


def test_playground_page_and_plots_are_served_from_the_image(client: httpx.Client, container: Container) -> None:
    page = client.get("/playground")
    assert page.status_code == 200 and "playground/static/playground.js" in page.text
    for name in ("playground.js", "playground.css"):
        assert client.get(f"/playground/static/{name}").content == (ROOT / "service" / "http" / "static" / name).read_bytes()
    for model in client.get("/models").json()["models"]:
        plot = client.get(f"/models/{model['name']}/versions/{model['version']}/plots/{model['plots'][0]}")
        assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")


def test_runs_as_non_root_with_read_only_models(container: Container) -> None:
    uid = docker("exec", container.name, "id", "-u").stdout.strip()
    assert uid != "0"
    write = docker("exec", container.name, "sh", "-c", "touch /app/models/x || exit 7", check=False)
    assert write.returncode == 7, "the service user must not be able to change the baked-in models"


def test_sentiment(client: httpx.Client, container: Container) -> None:
    response = client.post("/sentiment", json={"texts": [POSITIVE]})
    if "imdb_sentiment" not in container.served:
        assert response.status_code == 404
        return
    assert response.status_code == 200, response.text
    answer = response.json()[0]
    assert answer["label"] == "positive" and answer["probability_positive"] > 0.8
    assert answer["version"] == container.served["imdb_sentiment"]


def test_predict_price(client: httpx.Client, container: Container) -> None:
    response = client.post("/predict_price", json={"rows": [[HOUSE[f] for f in BOSTON_FEATURES]]})
    if "boston_housing" not in container.served:
        assert response.status_code == 404
        return
    assert response.status_code == 200, response.text
    answer = response.json()[0]
    assert 25 < answer["price"] < 55 and answer["unit"] == "$1000s"


def test_classify_real_photo_and_corrupt_image(client: httpx.Client, container: Container) -> None:
    response = client.post("/classify_image", files=[("images", ("cat.jpg", CAT, "image/jpeg"))])
    corrupt = client.post("/classify_image", files=[("images", ("cat.jpg", CAT[: len(CAT) // 2], "image/jpeg"))])
    if "image_classifier" not in container.served:
        assert response.status_code == 404 and corrupt.status_code == 404
        return
    assert response.status_code == 200, response.text
    answer = response.json()[0]
    assert answer["label"] == "cats" and answer["version"] == container.served["image_classifier"]
    assert corrupt.status_code == 400
    assert "images[0]: is truncated or corrupt" in corrupt.json()["error"]


def test_grpc_is_served_on_8081(container: Container) -> None:
    """The image serves the Open Inference Protocol over gRPC too: health, the index, an answer."""
    with grpc.insecure_channel(container.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=30)
        assert {m.name: int(m.version) for m in index.models} == container.served
        if "imdb_sentiment" in container.served:
            request = pb.ModelInferRequest(model_name="imdb_sentiment")
            request.inputs.add(name="texts", datatype="BYTES", shape=[1]).contents.bytes_contents.append(POSITIVE.encode())
            assert stub.ModelInfer(request, timeout=30).outputs[0].contents.bytes_contents[0] == b"positive"


def test_startup_log_has_no_errors(container: Container) -> None:
    log = container.logs()
    assert "Service modelserve initialized" in log
    assert "[ERROR]" not in log and " ERROR " not in log, log[-3000:]


# ---------------------------------------------------------------- graceful stop (last: it stops the container)


def _slow_request(container: Container) -> tuple[str, bytes]:
    """A request for a served model, big enough to be uploaded in slices over a few seconds."""
    if "imdb_sentiment" in container.served:
        return "/sentiment", json.dumps({"texts": [POSITIVE * 20] * 16}).encode()
    if "boston_housing" in container.served:
        return "/predict_price", json.dumps({"rows": [HOUSE] * 16}, indent=40).encode()
    return "/classify_image", json.dumps({"images": [base64.b64encode(CAT).decode()] * 4}).encode()


def test_sigterm_lets_the_request_in_flight_finish_and_exits_cleanly(container: Container) -> None:
    """`docker stop` (SIGTERM) while a request is being received: it still gets its 200, then exit 0."""
    path, body = _slow_request(container)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    slices = 16
    step = len(body) // slices + 1
    stopped: dict[str, object] = {}

    def stop() -> None:
        started = time.monotonic()
        result = docker("stop", "--time", "30", container.name, timeout=60, check=False)
        stopped.update(rc=result.returncode, seconds=time.monotonic() - started)

    stopper = threading.Thread(target=stop)
    with socket.create_connection(("127.0.0.1", container.port), timeout=60) as sock:
        sock.sendall(head.encode())
        for i in range(slices):
            sock.sendall(body[i * step : (i + 1) * step])
            if i == 3:
                stopper.start()  # SIGTERM arrives with most of the body still to come
            time.sleep(0.2)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    stopper.join(timeout=90)
    head_bytes, _, payload = response.partition(b"\r\n\r\n")
    status_line = head_bytes.split(b"\r\n", 1)[0].decode(errors="replace")
    assert status_line.endswith("200 OK"), f"{status_line!r}\n{container.logs()[-3000:]}"
    if b"transfer-encoding: chunked" in head_bytes.lower():
        payload = _dechunk(payload)
    assert len(json.loads(payload)) == 16
    assert stopped.get("rc") == 0, stopped
    state = container.state()
    assert state["ExitCode"] != 137, f"docker had to SIGKILL it after {stopped['seconds']:.0f} s: SIGTERM did not stop it"
    assert not state["Running"] and state["ExitCode"] == 0 and not state["OOMKilled"], state


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out

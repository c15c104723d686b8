"""kill -9 of the worker inside the container: a new worker, as on a bare server (defect 11).

With BENTOML_CONTAINERIZED=true in the image, BentoML's arbiter did not respawn a dead
worker and the whole container exited (239 requests lost, 4.5 s down with a restart
policy). Needs a Docker daemon; uses the image tests/test_container.py builds (or
MODELSERVE_TEST_IMAGE).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator

import pytest

from benchmarks.launch import free_port
from tests.faults.faultlib import Load, predict_price, wait_until
from tests.test_container import READY_TIMEOUT_S, docker, image  # noqa: F401 - `image` is a fixture

pytestmark = pytest.mark.e2e

CLIENTS = 4
FIND_WORKERS = (  # no procps in the slim image: read /proc (this script's own command line names the worker module too)
    "import os; print(' '.join(p for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid() "
    "and open(f'/proc/{p}/cmdline', 'rb').read().startswith(b'/opt/venv/bin/python') and b'_bentoml_impl.worker' in open(f'/proc/{p}/cmdline', 'rb').read()))"
)


@pytest.fixture()
def container(image: str) -> Iterator[tuple[str, str]]:  # noqa: F811 - the fixture imported above
    name = f"modelserve-fault-{uuid.uuid4().hex[:8]}"
    port = free_port()
    # One worker (the default is one per CPU): the case where nothing else answers while it is replaced.
    docker("run", "--detach", "--name", name, "--env", "MODELSERVE_WORKERS=1", "--publish", f"127.0.0.1:{port}:3000", image)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(url), timeout=READY_TIMEOUT_S, every=0.3)
        yield name, url
    finally:
        docker("rm", "--force", name, check=False)


def _ready(url: str) -> bool:
    try:
        return predict_price(url)[0] == 200
    except Exception:
        return False


def workers_in(name: str) -> list[int]:
    return sorted(int(p) for p in docker("exec", name, "python3", "-c", FIND_WORKERS).stdout.split())


def test_kill_9_of_the_worker_in_the_container_starts_a_new_one(container: tuple[str, str]) -> None:
    name, url = container
    (pid,) = workers_in(name)
    with Load(url, CLIENTS) as load:
        time.sleep(1.5)
        docker("exec", name, "python3", "-c", f"import os; os.kill({pid}, 9)")
        killed_at = time.monotonic() - load.started
        with contextlib.suppress(AssertionError):  # measured below
            wait_until(lambda: _ready(url), timeout=60, every=0.2)
        time.sleep(1.0)
    state = json.loads(docker("inspect", "--format", "{{json .State}}", name).stdout)
    ordered = sorted(load.outcomes, key=lambda o: o.at)
    lost = load.failed()
    gap = load.recovery_after(killed_at)
    print(
        f"\ncontainer, kill -9 of its worker under {CLIENTS} clients: running={state['Running']} (exit {state['ExitCode']}), "
        f"{len(lost)} of {len(ordered)} requests failed, first answer {gap:.1f}s after the kill"
    )
    assert state["Running"], f"the container exited with {state['ExitCode']}: a dead worker must be replaced, as on a bare server"
    assert workers_in(name) not in ([], [pid])
    assert len(lost) <= CLIENTS and ordered[-1].status == 200

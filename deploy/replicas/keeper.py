"""Starts again a replica that was killed through the Docker API and not stopped: what no restart policy does.

Docker's restart policies (`restart: unless-stopped` in compose.yaml) bring back a replica
whose process dies: a crash, `kill -9` of the process, the kernel's OOM killer. But
`docker kill` counts as stopping it by hand, and Docker then leaves it down whatever the
policy ("the restart policy is disabled until the next time the container is started",
docker kill's manual page): measured, a replica killed with `docker kill -s KILL` under
load stayed down until `replicas.sh up 3` was run by hand.

This keeper follows the Docker events of its own Compose project's `modelserve` containers
and starts again one that died after a `kill` event when no `stop` event follows within
KEEPER_GRACE_S: `docker stop`, `docker-compose stop`, `down` and scaling down all stop
(and remove) a container, and are left alone; so are deaths the restart policy handles
(no `kill` event). Standard library only; it talks to the daemon's socket, which it needs
mounted (compose.yaml): anyone who controls this container controls Docker on the host,
so it runs with no network, no capabilities and a read-only root file system.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import signal
import socket
import sys
import threading
import time
import urllib.parse
from typing import Any

DOCKER_SOCKET = os.environ.get("KEEPER_DOCKER_SOCKET", "/var/run/docker.sock")
SERVICE = os.environ.get("KEEPER_SERVICE", "modelserve")
GRACE_S = float(os.environ.get("KEEPER_GRACE_S", "2"))
TICK_S = 0.5


class DockerConnection(http.client.HTTPConnection):
    """HTTP to the Docker daemon over its unix socket."""

    def __init__(self, timeout: float | None = 30) -> None:
        super().__init__("docker", timeout=timeout)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(DOCKER_SOCKET)


def api(method: str, path: str) -> tuple[int, Any]:
    connection = DockerConnection()
    try:
        connection.request(method, path)
        response = connection.getresponse()
        body = response.read()
        return response.status, json.loads(body) if body.strip().startswith((b"{", b"[")) else body.decode(errors="replace")
    finally:
        connection.close()


def own_project() -> str:
    """The Compose project this keeper belongs to (its own container's label; the hostname is the container id)."""
    status, container = api("GET", f"/containers/{socket.gethostname()}/json")
    if status != 200:
        raise SystemExit(f"keeper: cannot inspect its own container ({status}: {container})")
    return container["Config"]["Labels"]["com.docker.compose.project"]


def events(project: str, out: queue.Queue[dict[str, Any]]) -> None:
    """Container events of the project's replicas, as they happen, into `out` (runs in a thread)."""
    labels = [f"com.docker.compose.project={project}", f"com.docker.compose.service={SERVICE}"]
    filters = json.dumps({"type": ["container"], "label": labels, "event": ["kill", "die", "stop", "start", "destroy"]})
    connection = DockerConnection(timeout=None)
    connection.request("GET", "/events?filters=" + urllib.parse.quote(filters))
    response = connection.getresponse()
    while line := response.readline():
        if line.strip():
            out.put(json.loads(line))
    raise SystemExit("keeper: the Docker daemon closed the event stream")


def main() -> None:
    project = own_project()
    print(f"keeper: watching {project}'s {SERVICE} containers; one killed through Docker and not stopped is started again", flush=True)
    incoming: queue.Queue[dict[str, Any]] = queue.Queue()
    threading.Thread(target=events, args=(project, incoming), daemon=True).start()
    killed: set[str] = set()  # a kill event came, no die yet
    died: dict[str, float] = {}  # died after a kill: when (monotonic)
    while True:
        try:
            event = incoming.get(timeout=TICK_S)
        except queue.Empty:
            event = None
        if event is not None:
            container, action = event["id"], event["Action"]
            if action == "kill":
                killed.add(container)
            elif action == "die" and container in killed:
                died[container] = time.monotonic()
            elif action in ("stop", "start", "destroy"):  # stopped on purpose, or started (by the policy, or by hand)
                killed.discard(container)
                died.pop(container, None)
        for container, at in list(died.items()):
            if time.monotonic() - at >= GRACE_S:
                died.pop(container)
                killed.discard(container)
                status, answer = api("POST", f"/containers/{container}/start")
                print(f"keeper: {container[:12]} was killed and not stopped; started again ({status} {answer or ''})".rstrip(), flush=True)


def stop(signum: int, frame: Any) -> None:
    """SIGTERM (docker stop, docker-compose down; compose.yaml sets it as the stop signal): exit now. The keeper is
    PID 1 of its container, and the kernel ignores a signal PID 1 has no handler for."""
    raise SystemExit(0)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, stop)
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)

"""Replicas behind HAProxy on one Docker host: throughput with 1, 2 and 3 replicas, a replica killed
under load, and a promotion reaching every replica (deploy/replicas/compose.yaml).

    python -m benchmarks.replicas [--replicas 1,2,3] [--seconds 20] [--clients 32] [--image modelserve:cpu]

Needs a Docker daemon, docker-compose and hey. Builds the serving image with
deploy/build-image.sh unless --image names one that exists, starts the Compose project on a
copy of models/ (with a second version of one model, for the promotion), and prints and
writes benchmarks/results/replicas.md and replicas.png. tests/test_replicas.py uses the
same helpers (Cluster, kill_under_load, promote_under_load) with assertions.

Everything runs on this machine: on 2 cores, N replicas and the client share the same two
cores, so this shows the balancer's and the replicas' overhead more than scaling.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from math import isnan
from pathlib import Path

import httpx

from benchmarks.containers import daemon_problem, docker
from benchmarks.launch import ROOT, free_port
from benchmarks.load import RESULTS, Run, parse_hey, payloads, request_body, run_hey
from benchmarks.report import figure
from service.core.registry import METADATA_FILE, Registry

COMPOSE_FILE = ROOT / "deploy" / "replicas" / "compose.yaml"
SERVICE = "modelserve"
BACKENDS = ("replicas", "replicas_grpc")  # HAProxy backends in deploy/replicas/haproxy.cfg: HTTP and gRPC
BASE_IMAGES = ("modelserve-base:bookworm-py3.11", "python:3.11-slim-bookworm")
BUILD_TIMEOUT_S = 900
READY_TIMEOUT_S = 180
POLL_S = 0.1
BALANCER_POLL_S = 0.05
PROMOTED_MODEL = "imdb_sentiment"  # cheap to reload; /sentiment answers name the version
PROMOTED_ENDPOINT = "sentiment"
SERVER_EVENT = re.compile(r"Server replicas/(\w+) is (?:going )?(DOWN|UP)")
ENDPOINTS = ("sentiment", "predict_price", "classify_image")


def docker_problem() -> str | None:
    """Why the replicas cannot run here (no daemon, no docker-compose, no hey), or None."""
    return daemon_problem(("docker", "docker-compose", "hey"))


def serving_image(image: str | None) -> str:
    """An existing image, or modelserve:cpu built from this checkout with deploy/build-image.sh (cached layers: seconds)."""
    if image:
        docker("image", "inspect", image)
        return image
    build = subprocess.run(
        ["bash", str(ROOT / "deploy" / "build-image.sh"), "--quiet", "--tag", "modelserve:cpu"],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, cwd=ROOT,
    )  # fmt: skip
    if build.returncode != 0:
        raise RuntimeError(f"deploy/build-image.sh failed:\n{build.stderr[-4000:]}")
    return "modelserve:cpu"


def balancer_base() -> str:
    """The base the serving image was built on (deploy/build-image.sh's choice), for the balancer image."""
    forced = os.environ.get("MODELSERVE_BASE_IMAGE")
    candidates = [forced] if forced else list(BASE_IMAGES)
    for candidate in candidates:
        if docker("image", "inspect", candidate, check=False).returncode == 0:
            return candidate
    raise RuntimeError(f"no base image for the balancer: none of {candidates} exists (run deploy/build-image.sh first)")


def registry_with_next_version(work: Path, model: str = PROMOTED_MODEL) -> tuple[Path, int, int]:
    """A copy of models/ where `model` has a second version (the same files under the next number), not yet promoted."""
    root = work / "models"
    shutil.copytree(ROOT / "models", root, ignore=shutil.ignore_patterns(".staging-*"))
    current = Registry(root).current(model)
    new = max(Registry(root).versions(model)) + 1
    shutil.copytree(current.path, root / model / str(new))
    metadata = json.loads((root / model / str(new) / METADATA_FILE).read_text())
    metadata["version"] = new
    (root / model / str(new) / METADATA_FILE).write_text(json.dumps(metadata))
    for path in [root, *root.rglob("*")]:  # the replicas run as uid 10001 and only read
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root, current.version, new


@dataclass
class ServerState:
    name: str  # HAProxy's slot, replica1..16
    status: str  # UP, DOWN, "DOWN 1/2", "MAINT (resolution)", ...
    address: str  # ip:port, empty for an unused slot
    sessions: int  # requests sent to it so far
    retries: int
    redispatches: int


@dataclass
class Replica:
    container: str
    ip: str
    pid: int
    started_at: str
    restarts: int


@dataclass
class Cluster:
    """One Compose project of N replicas + HAProxy, on free loopback ports."""

    image: str
    registry: Path
    poll_s: int = 2
    project: str = field(default_factory=lambda: f"msreplicas{uuid.uuid4().hex[:8]}")
    lb_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    stats_port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.lb_port}"

    @property
    def grpc_address(self) -> str:
        """The balancer's gRPC port: the Open Inference Protocol, spread over the replicas per call."""
        return f"127.0.0.1:{self.grpc_port}"

    def compose(self, *args: str, timeout: float = 300) -> str:
        env = os.environ | {
            "MODELSERVE_IMAGE": self.image,
            "MODELSERVE_BASE_IMAGE": balancer_base(),
            "MODELSERVE_REGISTRY": str(self.registry),
            "MODELSERVE_RELOAD_POLL_S": str(self.poll_s),
            "MODELSERVE_LB_PORT": str(self.lb_port),
            "MODELSERVE_LB_GRPC_PORT": str(self.grpc_port),
            "MODELSERVE_LB_STATS_PORT": str(self.stats_port),
        }
        command = ["docker-compose", "--project-name", self.project, "--file", str(COMPOSE_FILE), *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command[3:])} failed:\n{result.stdout[-2000:]}{result.stderr[-3000:]}")
        return result.stdout

    def up(self, replicas: int) -> float:
        """Start (or scale to) `replicas`; seconds until HAProxy has every one of them UP."""
        started = time.monotonic()
        self.compose("up", "--detach", "--build", "--scale", f"{SERVICE}={replicas}")
        self.wait_up(replicas)
        return time.monotonic() - started

    def down(self) -> None:
        self.compose("down", "--volumes", "--timeout", "10", timeout=180)

    def wait_up(self, replicas: int, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ips = {r.ip for r in self.replicas()}
                # each backend checks its servers on its own: a replica UP for HTTP may still be rising for gRPC
                ups = [{s.address.split(":")[0] for s in self.servers(backend) if s.status == "UP"} for backend in BACKENDS]
                if len(ips) == replicas and all(up == ips for up in ups):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{replicas} replicas not all UP after {timeout:.0f}s: {self.servers()}\n{self.logs()[-3000:]}")

    def servers(self, backend: str = "replicas") -> list[ServerState]:
        """HAProxy's view of every replica slot in `backend` (HTTP: replicas, gRPC: replicas_grpc), from its stats page (CSV)."""
        text = httpx.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5).text.lstrip("# ")
        rows = [r for r in csv.DictReader(io.StringIO(text)) if r["pxname"] == backend and r["svname"] != "BACKEND"]
        return [
            ServerState(r["svname"], r["status"], r["addr"], int(r["stot"] or 0), int(r["wretr"] or 0), int(r["wredis"] or 0)) for r in rows
        ]

    def replicas(self) -> list[Replica]:
        ids = docker(
            "ps", "--quiet", "--filter", f"label=com.docker.compose.project={self.project}",
            "--filter", f"label=com.docker.compose.service={SERVICE}",
        ).stdout.split()  # fmt: skip
        return [self.replica(i) for i in ids]

    def replica(self, container: str) -> Replica:
        # |-separated: a restarting container has no address yet
        fmt = "{{.Name}}|{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}|{{.State.Pid}}|{{.State.StartedAt}}|{{.RestartCount}}"
        name, ip, pid, started, restarts = docker("inspect", "--format", fmt, container).stdout.strip().split("|")
        return Replica(name.lstrip("/"), ip, int(pid), started, int(restarts))

    def logs(self) -> str:
        result = subprocess.run(
            ["docker-compose", "--project-name", self.project, "--file", str(COMPOSE_FILE), "logs", "--no-color", "--tail", "40"],
            capture_output=True, text=True, env=os.environ | {"MODELSERVE_IMAGE": self.image}, check=False,
        )  # fmt: skip
        return result.stdout + result.stderr


class HeyLoad:
    """hey sending `clients` closed-loop clients to `endpoint` until stopped (SIGINT: hey then prints its report).

    rate: requests per second per client (hey -q); None sends each request as soon as the last is answered."""

    def __init__(self, url: str, endpoint: str, clients: int, max_seconds: float = 300, rate: float | None = None) -> None:
        content_type, body, _ = request_body(endpoint, payloads()[endpoint])
        with tempfile.NamedTemporaryFile("wb", suffix=".body", delete=False) as handle:
            handle.write(body)
        self.body, self.endpoint, self.clients = Path(handle.name), endpoint, clients
        command = ["hey", "-z", f"{max_seconds:.0f}s", "-c", str(clients), "-t", "120", "-m", "POST", "-T", content_type, "-D", handle.name]
        command += ["-q", f"{rate:g}"] if rate else []
        self.process = subprocess.Popen([*command, f"{url}/{endpoint}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.started = time.monotonic()
        self.run: Run | None = None
        self.lock = threading.Lock()

    def stop(self) -> Run:
        """hey's report; a second call returns the first one's."""
        with self.lock:
            if self.run is None:
                self.process.send_signal(signal.SIGINT)
                report, _ = self.process.communicate(timeout=120)
                self.body.unlink()
                self.run = Run(self.endpoint, self.clients, time.monotonic() - self.started)
                parse_hey(self.run, report)
            return self.run


def failed(run: Run) -> int:
    """Requests that did not get a 200: other status codes plus transport errors."""
    return sum(n for code, n in run.codes.items() if code != 200) + run.transport_errors


def answered(run: Run) -> int:
    return sum(run.codes.values()) + run.transport_errors


@dataclass
class Failover:
    victim: str  # the container
    requests: int = 0
    failed: int = 0
    retries: int = 0
    redispatches: int = 0
    marked_down_s: float = float("nan")  # kill -> HAProxy logs it DOWN
    last_sent_s: float = float("nan")  # kill -> last request HAProxy sent it before it came back (stats, 50 ms polls)
    restarted_s: float = float("nan")  # kill -> Docker's restart policy started the container again
    ready_s: float = float("nan")  # kill -> its own /readyz answers 200
    back_up_s: float = float("nan")  # kill -> HAProxy logs it UP again
    serving_s: float = float("nan")  # kill -> HAProxy sends it requests again (stats)
    ip: dict[str, str] = field(default_factory=dict, repr=False)  # its address now (a restart may change it)


WITNESS_CLIENTS, WITNESS_RATE = 4, 10.0  # the paced load that sees a replica back in rotation after a burst


def kill_under_load(
    cluster: Cluster, clients: int = 32, kill_after_s: float = 5, timeout: float = 90, how: str = "process", burst_s: float | None = None
) -> Failover:
    """Kill one replica while hey sends load through the balancer; the load goes on until the balancer sends the replica
    requests again, plus 2 s. `how`: "process", kill -9 of its server process (a crash: Docker's restart policy starts it
    again); "docker", `docker kill -s KILL` of the container (a stop by hand to Docker: compose.yaml's keeper starts it).

    burst_s: the `clients` unpaced clients stop `burst_s` after the kill, and a paced load (WITNESS_CLIENTS clients at
    WITNESS_RATE requests/s each, from the start) carries on until the replica serves again: the kill still lands on
    requests in flight, but the 15-20 s of its restart are not spent with every core answering hey (the tests' way).
    None: the full load throughout (the benchmark's measurement)."""
    victim = cluster.replicas()[0]
    loads = [HeyLoad(cluster.url, PROMOTED_ENDPOINT, clients)]
    if burst_s is not None:
        loads.append(HeyLoad(cluster.url, PROMOTED_ENDPOINT, WITNESS_CLIENTS, rate=WITNESS_RATE))
    time.sleep(kill_after_s)
    before = {s.name: s for s in cluster.servers()}
    result = Failover(victim.container, ip={"ip": victim.ip})
    killed, killed_wall = time.monotonic(), time.time()
    if how == "docker":
        docker("kill", "--signal", "KILL", victim.container)
    else:
        os.kill(victim.pid, signal.SIGKILL)
    burst_end = threading.Timer(burst_s, loads[0].stop) if burst_s is not None else None
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_container, args=(cluster, victim, result, killed, stop))
    watcher.start()
    try:
        if burst_end is not None:
            burst_end.start()
        _watch_balancer(cluster, result, killed, {n: s.sessions for n, s in before.items()}, timeout)
        time.sleep(2)
    finally:
        stop.set()
        watcher.join()
        if burst_end is not None:
            burst_end.cancel()
        runs = [load.stop() for load in loads]
    after = {s.name: s for s in cluster.servers()}
    result.requests, result.failed = sum(answered(run) for run in runs), sum(failed(run) for run in runs)
    result.retries = sum(after[n].retries - before[n].retries for n in after if n in before)
    result.redispatches = sum(after[n].redispatches - before[n].redispatches for n in after if n in before)
    slots = {n for n, s in before.items() if s.address.split(":")[0] == victim.ip}
    slots |= {n for n, s in after.items() if s.address.split(":")[0] == result.ip["ip"]}  # a restart may move it
    result.marked_down_s, result.back_up_s = balancer_events(cluster, slots, killed_wall)
    return result


def _watch_balancer(cluster: Cluster, result: Failover, killed: float, sessions: dict[str, int], timeout: float) -> None:
    """Requests HAProxy sends to the victim's address (whichever slot holds it), every 50 ms, until it serves again."""
    while time.monotonic() - killed < timeout and isnan(result.serving_s):  # NaN in `result`: not seen yet
        servers = cluster.servers()
        now = time.monotonic() - killed
        for state in servers:
            if state.address.split(":")[0] == result.ip["ip"] and state.sessions > sessions.get(state.name, 0):
                if isnan(result.ready_s):
                    result.last_sent_s = now
                elif state.status == "UP":
                    result.serving_s = now
            sessions[state.name] = state.sessions
        time.sleep(BALANCER_POLL_S)
    if isnan(result.last_sent_s):
        result.last_sent_s = 0.0  # nothing was sent to it after the kill


def _watch_container(cluster: Cluster, victim: Replica, result: Failover, killed: float, stop: threading.Event) -> None:
    while not stop.is_set() and isnan(result.ready_s):
        if isnan(result.restarted_s):
            again = cluster.replica(victim.container)
            if again.started_at != victim.started_at and again.pid and again.ip:
                result.restarted_s, result.ip["ip"] = time.monotonic() - killed, again.ip
        else:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://{result.ip['ip']}:3000/readyz", timeout=1).status_code == 200:
                    result.ready_s = time.monotonic() - killed
        time.sleep(POLL_S)


def balancer_events(cluster: Cluster, slots: set[str], since: float) -> tuple[float, float]:
    """Seconds after `since` (wall clock) when HAProxy logged one of `slots` DOWN, and then UP, from its timestamped log."""
    (balancer,) = docker("ps", "--quiet", "--filter", f"label=com.docker.compose.project={cluster.project}",
                         "--filter", "label=com.docker.compose.service=balancer").stdout.split()  # fmt: skip
    down = up = float("nan")
    for line in docker("logs", "--timestamps", balancer).stdout.splitlines():
        stamp, _, text = line.partition(" ")
        match = SERVER_EVENT.search(text)
        if not match or match[1] not in slots:
            continue
        moment = datetime.fromisoformat(stamp[:26] + "+00:00").timestamp() - since
        if match[2] == "DOWN" and moment >= 0 and isnan(down):
            down = moment
        elif match[2] == "UP" and not isnan(down) and isnan(up):
            up = moment
    return down, up


@dataclass
class Promotion:
    model: str
    old: int
    new: int
    poll_s: int
    seen_s: dict[str, float] = field(
        default_factory=dict
    )  # replica -> seconds from CURRENT rewritten to /models showing `new` in every worker
    requests: int = 0
    failed: int = 0
    versions_after: dict[int, int] = field(default_factory=dict)  # version -> answers, through the balancer, once all switched
    answered_by: set[str] = field(default_factory=set)  # balancer slots that answered those
    codes: dict[int, int] = field(default_factory=dict)  # hey's status codes during the promotion (what failed, if any)


SWITCH_DEADLINE_S = 180  # how long a promotion may take to reach every replica on a loaded machine (it takes seconds)


def serves_everywhere(client: httpx.Client, ip: str, version: int) -> bool:
    """Whether a replica's /models shows `version` of the promoted model, in every worker it lists."""
    try:
        body = client.get(f"http://{ip}:3000/models").json()
    except (httpx.HTTPError, ValueError):
        return False
    served = [{m["name"]: m["version"] for m in body["models"]}.get(PROMOTED_MODEL)]
    served += [(w.get("served") or {}).get(PROMOTED_MODEL) for w in body.get("workers") or []]
    return all(v == version for v in served)


def promote_under_load(cluster: Cluster, old: int, new: int, clients: int = 32, settle_s: float = 3) -> Promotion:
    """Promote `new` in the shared registry while hey sends load through the balancer; when each replica serves it;
    then one request per replica slot several times over, each answer naming its version."""
    replicas = cluster.replicas()
    load = HeyLoad(cluster.url, PROMOTED_ENDPOINT, clients)
    result = Promotion(PROMOTED_MODEL, old, new, cluster.poll_s)
    try:
        time.sleep(settle_s)
        promoted = time.monotonic()
        Registry(cluster.registry).promote(PROMOTED_MODEL, new)
        with httpx.Client(timeout=10) as client:
            while len(result.seen_s) < len(replicas) and time.monotonic() - promoted < cluster.poll_s + SWITCH_DEADLINE_S:
                for replica in replicas:
                    if replica.container not in result.seen_s and serves_everywhere(client, replica.ip, new):
                        result.seen_s[replica.container] = time.monotonic() - promoted
                time.sleep(POLL_S)
            make = payloads()[PROMOTED_ENDPOINT]
            for i in range(12 * len(replicas)):
                response = client.post(f"{cluster.url}/{PROMOTED_ENDPOINT}", **make(i))
                version = response.json()[0]["version"] if response.status_code == 200 else -response.status_code
                result.versions_after[version] = result.versions_after.get(version, 0) + 1
                result.answered_by.add(response.headers.get("x-served-by", "?"))
            time.sleep(settle_s)
    finally:
        run = load.stop()
    result.requests, result.failed, result.codes = answered(run), failed(run), dict(run.codes)
    return result


def scale_down_under_load(cluster: Cluster, replicas: int, clients: int = 32, settle_s: float = 3) -> tuple[Run, float]:
    """`docker-compose up --scale` to fewer replicas while hey sends load: the ones removed get SIGTERM and drain.
    Returns hey's run and how long the scaling command took."""
    load = HeyLoad(cluster.url, PROMOTED_ENDPOINT, clients)
    try:
        time.sleep(settle_s)
        started = time.monotonic()
        cluster.compose("up", "--detach", "--scale", f"{SERVICE}={replicas}")
        took = time.monotonic() - started
        time.sleep(settle_s)
    finally:
        run = load.stop()
    return run, took


def direct_run(cluster: Cluster, endpoint: str, clients: int, seconds: float) -> Run:
    """hey straight at one replica's port, no balancer: what the balancer costs."""
    url = f"http://{cluster.replicas()[0].ip}:3000"
    return asyncio.run(run_hey(url, endpoint, clients, seconds, payloads()[endpoint]))


def throughput(cluster: Cluster, counts: list[int], endpoints: list[str], clients: int, seconds: float) -> list[tuple[str, int, Run]]:
    rows: list[tuple[str, int, Run]] = []
    for n in counts:
        cluster.up(n)
        for endpoint in endpoints if n == 1 else ():
            rows.append(("direct", 1, direct_run(cluster, endpoint, clients, seconds)))
            _print_row(*rows[-1])
        for endpoint in endpoints:
            rows.append(("haproxy", n, asyncio.run(run_hey(cluster.url, endpoint, clients, seconds, payloads()[endpoint]))))
            _print_row(*rows[-1])
    return rows


HEADER = (
    "| path | replicas | endpoint | clients | requests | req/s | p50 ms | p99 ms | not 200 |\n|---|---:|---|---:|---:|---:|---:|---:|---:|"
)


def _row(path: str, n: int, run: Run) -> str:
    p50, p99 = run.p50_p99()
    total = sum(run.codes.values()) + run.transport_errors
    return f"| {path} | {n} | {run.endpoint} | {run.clients} | {total:,} | {total / run.seconds:,.0f} | {p50:.1f} | {p99:.1f} | {failed(run)} |"


def _print_row(path: str, n: int, run: Run) -> None:
    print(_row(path, n, run), flush=True)


def report(rows: list[tuple[str, int, Run]], failover: Failover | None, promotion: Promotion | None, args: argparse.Namespace) -> str:
    lines = [
        "# Replicas behind HAProxy (deploy/replicas)",
        "",
        f"`python -m benchmarks.replicas --replicas {args.replicas} --seconds {args.seconds:g} --clients {args.clients}`; "
        f"{os.cpu_count()} cores shared by the replicas, HAProxy and hey (load average {os.getloadavg()[0]:.1f} at the end: "
        "other work shares this machine); one item per request, closed loop. "
        "`direct` is hey straight at one replica's port, without the balancer.",
        "",
        HEADER,
        *[_row(*r) for r in rows],
    ]
    if failover:
        f = failover
        lines += [
            "",
            f"**A replica killed under load** (kill -9 of its server process, {args.clients} hey clients on /sentiment through the balancer): "
            f"{f.failed} of {f.requests:,} requests failed; HAProxy retried {f.retries} and redispatched {f.redispatches}. "
            f"After the kill: marked down {f.marked_down_s:.2f} s, last request sent to it {f.last_sent_s:.2f} s, container restarted "
            f"{f.restarted_s:.1f} s, its /readyz 200 {f.ready_s:.1f} s, UP in HAProxy {f.back_up_s:.1f} s, serving again {f.serving_s:.1f} s.",
        ]
    if promotion:
        p = promotion
        seen = ", ".join(f"{s:.1f} s" for s in sorted(p.seen_s.values()))
        lines += [
            "",
            f"**Promotion** of {p.model} v{p.old} -> v{p.new} in the shared registry under load (poll interval {p.poll_s} s): "
            f"each replica served v{p.new} after {seen}; {p.failed} of {p.requests:,} requests failed; then "
            f"{sum(p.versions_after.values())} answers through the balancer, by version: {p.versions_after}, from {sorted(p.answered_by)}.",
        ]
    return "\n".join(lines) + "\n"


def plot(rows: list[tuple[str, int, Run]], path: Path) -> None:
    with figure(path, 1, 2, size=(11, 4)) as (_, axes):
        left, right = axes[0]
        for endpoint in dict.fromkeys(r.endpoint for _, _, r in rows):
            mine = [(n, r) for p, n, r in rows if p == "haproxy" and r.endpoint == endpoint]
            color = left.plot([n for n, _ in mine], [sum(r.codes.values()) / r.seconds for _, r in mine], "o-", label=endpoint)[
                0
            ].get_color()
            right.plot([n for n, _ in mine], [r.p50_p99()[1] for _, r in mine], "o-", color=color, label=endpoint)
            for p, _, r in rows:
                if p == "direct" and r.endpoint == endpoint:
                    rate = sum(r.codes.values()) / r.seconds
                    left.plot([1], [rate], "x", color=color, markersize=10, label=f"{endpoint}, direct (no balancer)")
        ticks = sorted({n for _, n, _ in rows})
        left.set(xlabel="replicas", ylabel="requests/s", title="Throughput through HAProxy", xticks=ticks)
        right.set(xlabel="replicas", ylabel="p99 latency (ms)", title="Tail latency", xticks=ticks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", default="1,2,3", help="replica counts for the throughput rows, in order")
    parser.add_argument("--seconds", type=float, default=20.0, help="per throughput row")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--endpoints", default=",".join(ENDPOINTS))
    parser.add_argument("--image", help="serving image to use (default: build modelserve:cpu from this checkout)")
    parser.add_argument("--skip-failover", action="store_true", help="only the throughput rows")
    args = parser.parse_args()
    problem = docker_problem()
    if problem:
        raise SystemExit(f"error: the replicas benchmark needs Docker: {problem}")
    image = serving_image(args.image)
    counts = [int(n) for n in args.replicas.split(",")]
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory(prefix="modelserve-replicas-") as work:
        registry, old, new = registry_with_next_version(Path(work))
        cluster = Cluster(image, registry)
        try:
            rows = throughput(cluster, counts, args.endpoints.split(","), args.clients, args.seconds)
            failover = promotion = None
            if not args.skip_failover:
                cluster.up(3)
                failover = kill_under_load(cluster, args.clients)
                cluster.wait_up(3)
                promotion = promote_under_load(cluster, old, new, args.clients)
        finally:
            cluster.down()
    text = report(rows, failover, promotion, args)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "replicas.md").write_text(text)
    plot(rows, RESULTS / "replicas.png")


if __name__ == "__main__":
    main()

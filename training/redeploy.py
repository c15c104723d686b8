"""Retrain and redeploy in one command: train, export, gate, promote, reload, smoke-test.

    python -m training.redeploy MODEL --data new_data.csv [trainer options]
    python -m training.redeploy MODEL --data new_data.csv --force     # skip the gate, say so
    python -m training.redeploy rollback MODEL

Any model in the registry: the new version is trained with the recipe the served
version records (metadata training.recipe: its kind or shipped recipe, and every
option it was trained with); options given here override the recorded ones. A model
whose version records no recipe (trained before versions recorded it) is retrained
with its recipe's defaults, which only the shipped names have.

Every step is printed. Production is what CURRENT points at and what the service
serves; a failure at any step leaves both as they were:

1. train a new version (the training CLI's code) and 2. export it with the parity
   check; a failure here never touched the registry's served version;
3. score the new version and the served one on the same held-out test set through
   onnxruntime (the serving path); promote only if the new one is not worse by
   more than --tolerance (accuracy for classifiers, MAE for regression);
4. point CURRENT at the new version (atomically);
5. ask the running service to reload (POST /admin/reload with the admin token),
   wait until GET /models reports the new version, and send it a few test inputs
   over HTTP. If the service refuses or the smoke test fails, CURRENT is put back
   and the service told to reload the old version.

The service also follows CURRENT by itself every MODELSERVE_RELOAD_POLL_S seconds;
the explicit reload makes the result (or the reason for a refusal) visible here.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx

from service.core.catalog import RECIPES
from service.core.config import ClientSettings, Settings
from service.core.errors import DeployError, Interrupted, UsageError, run_cli
from service.core.registry import Candidate, Registry, VersionFiles
from service.core.runtime import LoadedModel, load_model
from service.core.tasks.friendly import friendly_api
from service.core.tasks.gate import redeploy_gate
from service.core.tasks.kinds import task_for
from training import live
from training.__main__ import add_trainer_commands, recorded_recipe, train_recipe, trainer_modules

RELOAD_WAIT_S = 120
RESTORE_TIMEOUT_S = 15  # how long putting CURRENT back waits for the service to confirm (it follows CURRENT anyway)
SMOKE_ITEMS = 4
EVAL_CHUNK = 256


def step(number: int | str, message: str) -> None:
    print(f"[{number}] {message}", flush=True)


# ---------------------------------------------------------------- evaluation


def evaluate(model: LoadedModel, items: Sequence[Any], targets: Sequence[Any]) -> float:
    """The task's gate metric (accuracy, MAE, ...) on the serving path."""
    items = model.task.conform(items, model.assets)
    answers = [a for i in range(0, len(items), EVAL_CHUNK) for a in model.predict(items[i : i + EVAL_CHUNK])]
    return model.task.score(answers, targets)


def gate(
    new: LoadedModel, current: LoadedModel | None, items: Sequence[Any], targets: Sequence[Any], tolerance: float | None
) -> tuple[bool, str]:
    """(promote?, explanation) comparing new and current on the same test set."""
    rule = redeploy_gate(new.task)
    new_score = evaluate(new, items, targets)
    if current is None:
        return True, f"nothing served yet; new v{new.version} {rule.metric} = {new_score:.4f}"
    if current.labels != new.labels:
        return False, f"labels changed ({current.labels} -> {new.labels}); the versions cannot be compared on one test set"
    current_score = evaluate(current, items, targets)
    allowed = rule.default_tolerance if tolerance is None else tolerance
    ok = rule.passes(new_score, current_score, allowed)
    relation = f"{new_score:.4f} vs {current_score:.4f} ({rule.relation(allowed)})"
    return ok, f"{rule.metric} on {len(targets):,} held-out test items: new v{new.version} {relation}: {'not worse' if ok else 'worse'}"


# ---------------------------------------------------------------- talking to the service


class ServiceClient:
    """The running service's admin and read APIs; every way a call can go wrong is a DeployError with what was seen."""

    def __init__(self, url: str, token: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=60)
        self.url, self.token = url, token

    def _json(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """(status, decoded JSON body) of one call; DeployError when there is no answer or it is not JSON."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise DeployError(f"{method} {self.url}{path}: no answer ({type(exc).__name__}: {exc}); is the service running?") from exc
        try:
            return response.status_code, response.json()
        except ValueError:
            shown = " ".join(response.text.split())[:200]
            raise DeployError(
                f"{method} {self.url}{path} answered {response.status_code} with a body that is not JSON: {shown!r}"
            ) from None

    def served_versions(self, name: str) -> list[int | None]:
        """The version of `name` each worker serves (one entry per worker; /models lists them all)."""
        status, body = self._json("GET", "/models")
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("models"), list):
            raise DeployError(f"GET {self.url}/models answered {status}: {str(body)[:200]}")
        workers = body.get("workers")
        if isinstance(workers, list) and workers:
            return [(w.get("served") or {}).get(name) for w in workers if isinstance(w, dict)]
        return [next((m.get("version") for m in body["models"] if isinstance(m, dict) and m.get("name") == name), None)]

    def reload(self, name: str, timeout: float | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        extra = {"timeout": timeout} if timeout is not None else {}
        status, body = self._json("POST", "/admin/reload", json={"model": name}, headers=headers, **extra)
        message = body.get("error") or body.get("warning") if isinstance(body, dict) else None
        if status == 202:
            raise DeployError(f"the service reloaded, but not every worker confirmed: {message}")
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("results"), list) or not body["results"]:
            raise DeployError(f"service refused the reload ({status}): {message or str(body)[:300]}")
        return body

    def candidate(self, name: str, candidate: Candidate | None) -> dict[str, Any]:
        """POST /admin/candidate: serve `candidate` beside CURRENT in every worker, or clear it (None)."""
        body = {"model": name, "clear": True} if candidate is None else {"model": name, **candidate.to_json()}
        status, answer = self._json("POST", "/admin/candidate", json=body, headers={"Authorization": f"Bearer {self.token}"})
        if status not in (200, 202) or not isinstance(answer, dict):
            message = answer.get("error") if isinstance(answer, dict) else str(answer)[:300]
            raise DeployError(f"service refused the candidate ({status}): {message}")
        return answer

    def metrics(self) -> str:
        try:
            response = self.http.get("/metrics")
        except httpx.HTTPError as exc:
            raise DeployError(f"GET {self.url}/metrics: no answer ({type(exc).__name__}: {exc})") from exc
        if response.status_code != 200:
            raise DeployError(f"GET {self.url}/metrics answered {response.status_code}")
        return response.text

    def wait_for(self, name: str, version: int) -> float:
        started = time.monotonic()
        while time.monotonic() - started < RELOAD_WAIT_S:
            if set(self.served_versions(name)) == {version}:
                return time.monotonic() - started
            time.sleep(0.5)
        raise DeployError(f"{name} v{version} is not served by every worker on {self.url}/models after {RELOAD_WAIT_S}s")

    def smoke(self, name: str, version: int, request: dict[str, Any]) -> None:
        """Send `request` (smoke_request's) to the model's friendly route; every answer must come from `version`."""
        endpoint = f"models/{name}/predict"
        try:
            response = self.http.post(f"/{endpoint}", **request)
        except httpx.HTTPError as exc:
            raise DeployError(f"smoke test: /{endpoint}: no answer ({exc})") from exc
        if response.status_code != 200:
            raise DeployError(f"smoke test: /{endpoint} answered {response.status_code}: {' '.join(response.text.split())[:300]}")
        try:
            versions = {a["version"] for a in response.json()}
        except (ValueError, TypeError, KeyError):
            raise DeployError(f"smoke test: /{endpoint} answered 200 with a body that is not a list of answers") from None
        if versions != {version}:
            raise DeployError(f"smoke test: /{endpoint} answered with versions {versions}, expected {version}")


def smoke_request(registry: Registry, name: str, version: int, items: Sequence[Any]) -> dict[str, Any]:
    """httpx arguments that send `items` (test inputs of `version`) to the model's friendly route, as its kind takes them."""
    target = registry.get(name, version)
    metadata = target.read_metadata()
    task = task_for(metadata)
    return friendly_api(task).smoke_request(items, task.load_assets(VersionFiles(target.path), metadata))


def reload_and_check(
    client: ServiceClient, registry: Registry, name: str, version: int, smoke_items: Sequence[Any], number: int = 5
) -> None:
    """Step `number` (5; 7 after a live phase): reload, wait for every worker, smoke-test over HTTP."""
    result = client.reload(name)["results"][0]
    waited = client.wait_for(name, version)
    if result["status"] == "unchanged":  # its CURRENT watcher got there before the admin call
        done = f"already serving {name} v{version} (it follows CURRENT by itself)"
    else:
        done = f"{result['status']} {name} v{result.get('previous_version')} -> v{version}"
    step(number, f"service at {client.url}: {done}, on /models after {waited:.1f}s")
    client.smoke(name, version, smoke_request(registry, name, version, smoke_items))
    step(number, f"smoke test over HTTP: {len(smoke_items)} test inputs answered by v{version}")


# ---------------------------------------------------------------- the two commands


def redeploy(args: argparse.Namespace) -> int:
    from training.publish import publish

    registry = Registry(args.registry)
    name = args.model or args.name
    step(1, f"training {name} on {args.data} ({args.command} recipe)")
    result = train_recipe(args)
    step(2, "exporting to ONNX with the parity check")
    new_ref = publish(result, registry)
    step(2, f"wrote {new_ref.path} (parity max abs diff {new_ref.read_metadata()['parity']['max_abs_diff']:.2e})")

    previous = registry.current_version(name)
    new = load_model(new_ref, ["CPUExecutionProvider"])
    current = load_model(registry.get(name, previous), ["CPUExecutionProvider"]) if previous is not None else None
    ok, explanation = gate(new, current, result.test_items, result.test_targets, args.tolerance)
    step(3, f"gate: {explanation}")
    if not ok and not args.force:
        raise DeployError(
            f"v{new_ref.version} is kept in the registry but not promoted; v{previous} stays in production (use --force to override)"
        )
    if not ok:
        step(3, "--force given: promoting although the gate said no")
    if args.canary is not None or args.shadow:
        if args.no_reload:
            raise UsageError("--canary and --shadow watch a running service; they cannot go with --no-reload")
        return live_phase(args, registry, ServiceClient(args.url, args.token), new.version, result.test_items[:SMOKE_ITEMS])

    registry.promote(name, new_ref.version)
    step(4, f"CURRENT: v{previous} -> v{new_ref.version}")

    if args.no_reload:
        step(5, "--no-reload: not contacting a service (a running one follows CURRENT within MODELSERVE_RELOAD_POLL_S)")
    else:
        deploy(registry, ServiceClient(args.url, args.token), name, new_ref.version, previous, result.test_items[:SMOKE_ITEMS])
    if args.build:
        step(6, "bentoml build")
        subprocess.run(["bentoml", "build"], check=True)
    print(f"done: {name} v{new_ref.version} is in production")
    return 0


def live_phase(args: argparse.Namespace, registry: Registry, client: ServiceClient, version: int, smoke_items: Sequence[Any]) -> int:
    """Steps 4-7 with a live phase: (4) CANDIDATE, (5) watch /metrics, (6) promote or roll back, (7) reload and smoke-test.

    CANDIDATE is cleared whatever happens."""
    name = args.model
    predicts_value = task_for(registry.get(name, version).read_metadata()).predicts_value
    current = registry.current_version(name)
    candidate = Candidate(version, "shadow" if args.shadow else "canary", 0.0 if args.shadow else float(args.canary))
    described = "in the shadow of" if args.shadow else f"as a {candidate.percent:g}% canary beside"
    try:
        with _signals_interrupt():
            registry.set_candidate(name, candidate)
            client.candidate(name, candidate)
            step(4, f"CANDIDATE: v{version} {described} v{current}, watching for {args.watch:g} s")
            verdict = live.watch(args, client.metrics, name, current, version, predicts_value, lambda line: step(5, line))
    except BaseException as exc:
        registry.clear_candidate(name, "interrupted")
        with contextlib.suppress(Exception):
            client.candidate(name, None)
        if isinstance(exc, KeyboardInterrupt | Interrupted):
            raise Interrupted(f"interrupted during the live phase; CANDIDATE cleared, v{current} keeps serving") from exc
        raise DeployError(f"live phase failed ({exc}); CANDIDATE cleared, v{current} keeps serving") from exc
    if not (verdict.decided and verdict.promote):
        registry.clear_candidate(name, "rolled-back")
        client.candidate(name, None)
        why = "; ".join(verdict.reasons) if verdict.decided else f"not enough traffic to decide ({'; '.join(verdict.reasons)})"
        if verdict.resets and not verdict.decided:
            why = f"the service's metrics were reset {verdict.resets} time(s) during the watch, too little was counted to decide ({'; '.join(verdict.reasons)})"
        raise DeployError(f"rolled back: {why}; v{version} is kept in the registry, v{current} keeps serving")
    step(6, f"promote: {'; '.join(verdict.reasons)}")
    registry.promote(name, version)
    registry.clear_candidate(name, "promoted")
    deploy(registry, client, name, version, current, smoke_items, number=7)
    print(f"done: {name} v{version} is in production")
    return 0


def deploy(
    registry: Registry, client: ServiceClient, name: str, version: int, previous: int | None, smoke_items: Sequence[Any], number: int = 5
) -> None:
    """Step `number`, with CURRENT put back on `previous` if it fails in any way: refusal, a 502 from a proxy, Ctrl-C, SIGTERM."""
    try:
        with _signals_interrupt():
            reload_and_check(client, registry, name, version, smoke_items, number)
    except BaseException as exc:
        back = _restore(registry, client, name, previous)
        if isinstance(exc, KeyboardInterrupt | Interrupted):
            raise Interrupted(f"interrupted ({str(exc) or 'SIGINT'}) while the service reloaded; {back}") from exc
        reason = str(exc) if isinstance(exc, DeployError) else f"unexpected {type(exc).__name__}: {exc}"
        raise DeployError(f"{reason}; {back}") from exc


def _interrupt(signum: int, frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted, so that a stopped redeploy restores CURRENT before it exits.

    SIGINT gets its handler here too, as the batch scorer's does: a command started in the
    background of a script (`cmd &`, a CI step) inherits SIGINT ignored, and Python then
    never raises KeyboardInterrupt, so a `kill -INT` went unheard while the service reloaded.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _restore(registry: Registry, client: ServiceClient, name: str, previous: int | None) -> str:
    """Point CURRENT back at `previous` and ask the service to reload it (a second Ctrl-C cannot stop this); say what happened."""
    if previous is None:
        return "there was no earlier version to put back: CURRENT stays on the new one"
    blocked = {signal.SIGINT, signal.SIGTERM}
    main = threading.current_thread() is threading.main_thread()
    if main:
        signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        registry.promote(name, previous, rollback=True)
        try:
            client.reload(name, timeout=RESTORE_TIMEOUT_S)
            confirmed = "the service reloaded it"
        except Exception as exc:  # the service never left the old version, or is unreachable: it follows CURRENT when it can
            confirmed = f"the service did not confirm ({' '.join(str(exc).split())[:200]})"
    finally:
        if main:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)
    return f"CURRENT is back on v{previous}, {confirmed}"


def rollback(args: argparse.Namespace) -> int:
    registry = Registry(args.registry)
    old, target = registry.rollback(args.model)
    step(1, f"CURRENT: v{old} -> v{target} (rollback)")
    if not args.no_reload:
        client = ServiceClient(args.url, args.token)
        result = client.reload(args.model)["results"][0]
        waited = client.wait_for(args.model, target)
        step(2, f"service at {client.url}: {result['status']}, v{target} on /models after {waited:.1f}s")
    print(f"done: {args.model} v{target} is in production")
    return 0


def _common(parser: argparse.ArgumentParser, client: ClientSettings) -> None:
    parser.add_argument("--url", default=client.url, help="the running service (default: MODELSERVE_URL, else %(default)s)")
    parser.add_argument("--token", default=client.admin_token, help="admin token (default: MODELSERVE_ADMIN_TOKEN)")
    parser.add_argument("--no-reload", action="store_true", help="only change the registry; do not contact a service")


def _parser(argv: list[str], settings: Settings, client: ClientSettings, recorded: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.redeploy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for command, sub in add_trainer_commands(commands, argv, "retrain and redeploy", str(settings.model_root)).items():
        if recorded and argv and argv[0] == command:
            sub.set_defaults(**recorded)  # how the served version was trained; the command line overrides
        _common(sub, client)
        sub.add_argument(
            "--tolerance", type=float, help="how much worse the new version may be (default: the task's, 0.01 accuracy or 0.1 MAE)"
        )
        sub.add_argument("--force", action="store_true", help="promote even if the gate says the new version is worse")
        sub.add_argument("--build", action="store_true", help="also run `bentoml build` for a container deployment")
        live.add_arguments(sub)
        sub.set_defaults(handler=redeploy)
    back = commands.add_parser("rollback", help="point CURRENT back at the previously served version and reload")
    back.add_argument("model")
    back.add_argument("--registry", default=str(settings.model_root))
    _common(back, client)
    back.set_defaults(handler=rollback)
    return parser


def with_recipe(argv: list[str], settings: Settings) -> tuple[list[str], dict[str, Any]]:
    """`MODEL ...` as its recipe's command line, and the options the served version was trained with (the parser's defaults).

    A shipped name is its own command; any other name runs the kind its version records,
    under that name. The recorded options are defaults: what the command line gives wins.
    """
    if not argv or argv[0].startswith("-") or argv[0] == "rollback" or (argv[0] in trainer_modules() and argv[0] not in RECIPES):
        return argv, {}
    name, rest = argv[0], argv[1:]
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--registry", default=str(settings.model_root))
    registry = Registry(where.parse_known_args(rest)[0].registry)
    version = registry.current_version(name) if name in registry.model_names() else None
    if version is None:
        if name in RECIPES:
            return argv, {}
        raise UsageError(f"{name}: no served version under {registry.root} to retrain; train a first one with python -m training")
    try:
        recipe = recorded_recipe(registry.get(name, version))
    except UsageError:
        if name in RECIPES:  # a shipped version from before recipes were recorded: its recipe's defaults
            return argv, {}
        raise
    command = recipe["command"]
    return ([command] if command in RECIPES else [command, "--name", name]) + rest, recipe["options"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv

    def body() -> int:
        settings = Settings.from_env()
        command_line, recorded = with_recipe(argv, settings)
        args = _parser(command_line, settings, ClientSettings.from_env(), recorded).parse_args(command_line)
        if not args.no_reload and not args.token:
            raise UsageError(
                "the service's admin token is needed to reload it: set MODELSERVE_ADMIN_TOKEN or pass --token (or --no-reload)"
            )
        return args.handler(args)

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())

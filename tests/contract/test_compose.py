"""docker-compose.yml runs the same mesh as `tips up`: every service, one image."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kernel.settings import SERVICE_NAMES

pytestmark = pytest.mark.contract

ROOT = Path(__file__).resolve().parents[2]


def test_every_service_and_the_gateway_run_from_the_one_image() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in [*SERVICE_NAMES, "gateway"]:
        assert services[name]["command"] == ["serve", name], name
        assert services[name]["image"] == "tips-mesh:latest", name
    for infra in ("postgres", "nats", "triton", "otel-collector", "migrate"):
        assert infra in services


def test_required_secrets_are_never_defaulted() -> None:
    environment = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["auth"][
        "environment"
    ]
    for name in (
        "TIPS_AUTH_KEY_ENCRYPTION_KEY",
        "TIPS_INTEGRATIONS_KEK_RING",
        "TIPS_NOTIFIER_KEK_RING",
    ):
        assert ":?" in str(environment[name]), f"{name} must be required, not defaulted"


def test_every_process_talks_mutual_tls_with_its_own_certificate() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert services["certs"]["command"][0] == "certs"
    for name in [*SERVICE_NAMES, "gateway"]:
        env = services[name]["environment"]
        assert env["TIPS_TLS_CA_FILE"] == "/certs/ca.pem", name
        assert env["TIPS_TLS_CERT_FILE"] == f"/certs/{name}.pem", name
        assert env["TIPS_TLS_KEY_FILE"] == f"/certs/{name}.key", name
        assert "TIPS_INSECURE" not in env, name
        assert "certs:/certs:ro" in services[name]["volumes"], name
        assert (
            services[name]["depends_on"]["certs"]["condition"] == "service_completed_successfully"
        )


def test_every_tips_variable_in_compose_is_one_a_process_reads() -> None:
    """Settings ignore names they do not know: compose once set TIPS_TRITON_URL, which
    nothing read, so Triton never got a call. `tips serve` now refuses such names."""
    from tipsmesh.registry import environment_variables

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    names = set()
    for service in compose["services"].values():
        names |= {n for n in (service.get("environment") or {}) if n.startswith("TIPS_")}
    assert "TIPS_RECOMMENDER_TRITON_URL" in names
    assert names - environment_variables() == set()

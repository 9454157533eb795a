"""Port planning and CLI parsing of `tips up` (no processes started)."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest

from kernel.settings import DEFAULT_PORTS, GATEWAY_DEFAULT_PORT, SERVICE_NAMES
from tipsmesh import cli, devsecrets
from tipsmesh.devproviders import DEV_CLIENTS, dev_standin
from tipsmesh.up import GATEWAY, Mesh, UpError, UpOptions, check_ports, plan_ports

pytestmark = pytest.mark.unit


def test_default_ports_are_the_settings_defaults() -> None:
    ports = plan_ports(None)
    assert {n: ports[n] for n in SERVICE_NAMES} == DEFAULT_PORTS
    assert ports[GATEWAY] == GATEWAY_DEFAULT_PORT


def test_port_base_puts_gateway_on_base_and_services_after_it() -> None:
    ports = plan_ports(42000)
    assert ports[GATEWAY] == 42000
    assert [ports[n] for n in SERVICE_NAMES] == list(range(42001, 42001 + len(SERVICE_NAMES)))


def test_no_gateway_and_free_ports() -> None:
    ports = plan_ports(None, free=True, gateway=False)
    assert set(ports) == set(SERVICE_NAMES)
    assert len(set(ports.values())) == len(ports)


def test_port_base_out_of_range_is_rejected() -> None:
    with pytest.raises(UpError, match="port base 80 out of range"):
        plan_ports(80)


def test_taken_port_is_named_with_its_service() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(UpError) as err:
            check_ports({"profile": port, "auth": plan_ports(None, free=True)["auth"]})
    assert f"{port} (profile)" in str(err.value)
    assert "auth" not in str(err.value).split("Stop")[0]
    assert "--port-base" in str(err.value)


def test_child_env_names_every_peer_and_its_own_port(tmp_path: object) -> None:
    mesh = Mesh(UpOptions(env={"TIPS_SERVICE": "stale", "TIPS_LOG_LEVEL": "DEBUG"}))
    mesh.ports = plan_ports(43000)
    mesh.database_url, mesh.nats_url = "postgresql://postgres@127.0.0.1:1/tips", "nats://x:2"
    env = mesh.child_env("events")
    assert env["TIPS_SERVICE"] == "events"
    assert env["TIPS_PORT"] == str(mesh.ports["events"])
    assert env["TIPS_PROFILE_ADDR"] == f"127.0.0.1:{mesh.ports['profile']}"
    assert env["TIPS_GATEWAY_PORT"] == "43000"
    assert env["TIPS_DATABASE_URL"].endswith(":1/tips")
    assert env["TIPS_LOG_LEVEL"] == "DEBUG"  # the caller's settings pass through
    gateway_env = mesh.child_env(GATEWAY)
    assert "TIPS_SERVICE" not in gateway_env and "TIPS_PORT" not in gateway_env


def test_each_process_gets_its_own_metrics_port() -> None:
    """One TIPS_METRICS_PORT for `tips up` would stop every process but one."""
    mesh = Mesh(UpOptions(env={"TIPS_METRICS_PORT": "9464"}))
    mesh.ports = plan_ports(43000)
    mesh.database_url, mesh.nats_url = "postgresql://postgres@127.0.0.1:1/tips", "nats://x:2"
    ports = [mesh.child_env(name)["TIPS_METRICS_PORT"] for name in (GATEWAY, *SERVICE_NAMES)]
    assert ports[0] == "9464" and len(set(ports)) == len(ports)
    assert "TIPS_METRICS_PORT" not in mesh.child_env(None)  # migrate
    off = Mesh(UpOptions(env={}))
    off.ports = mesh.ports
    off.database_url, off.nats_url = mesh.database_url, mesh.nats_url
    assert "TIPS_METRICS_PORT" not in off.child_env("events")


def test_each_process_gets_only_its_own_secrets(tmp_path: Path) -> None:
    mesh = Mesh(UpOptions(env={}, run_dir=tmp_path))
    mesh.ports = plan_ports(43000)
    mesh.database_url = "postgresql://postgres:super-secret@127.0.0.1:1/tips"
    mesh.nats_url = "nats://x:2"
    migrate = mesh.child_env(None)
    roles = json.loads(migrate["TIPS_DB_ROLE_PASSWORDS"])
    assert set(roles) == set(SERVICE_NAMES) and len(set(roles.values())) == len(roles)
    assert migrate["TIPS_DATABASE_URL"].endswith("super-secret@127.0.0.1:1/tips")
    events = mesh.child_env("events")
    assert json.loads(events["TIPS_DB_ROLE_PASSWORDS"]) == {"events": roles["events"]}
    assert events["TIPS_DATABASE_URL"] == "postgresql://postgres@127.0.0.1:1/tips"
    assert "TIPS_NOTIFIER_KEK_RING" not in events and "TIPS_AUTH_KEY_ENCRYPTION_KEY" not in events
    notifier = mesh.child_env("notifier")
    assert "TIPS_NOTIFIER_KEK_RING" in notifier and "TIPS_INTEGRATIONS_KEK_RING" not in notifier
    gateway = mesh.child_env(GATEWAY)
    assert "TIPS_DB_ROLE_PASSWORDS" not in gateway
    assert not any("KEK" in name or "KEY_ENCRYPTION" in name for name in gateway)
    # The superuser password stays in the 0600 file: no process environment has it.
    superuser = devsecrets.superuser_password(tmp_path / "secrets.env")
    for env in (migrate, events, notifier, gateway):
        assert superuser not in "".join(env.values())
    assert (tmp_path / "secrets.env").stat().st_mode & 0o777 == 0o600
    # Each process holds its own certificate and key, no other's, and no plaintext.
    assert "TIPS_TLS_KEY_FILE" not in migrate
    for name, env in (("events", events), ("notifier", notifier), (GATEWAY, gateway)):
        assert env["TIPS_TLS_KEY_FILE"] == str(tmp_path / "tls" / f"{name}.key")
        assert env["TIPS_TLS_CERT_FILE"] == str(tmp_path / "tls" / f"{name}.pem")
        assert env["TIPS_INSECURE"] == "false"
        assert not [v for k, v in env.items() if k != "TIPS_TLS_KEY_FILE" and v.endswith(".key")]
    keys = sorted((tmp_path / "tls").glob("*.key"))
    assert keys and all(k.stat().st_mode & 0o777 == 0o600 for k in keys)


def test_integrations_alone_gets_the_dev_providers_clients(tmp_path: Path) -> None:
    mesh = Mesh(UpOptions(env={}, run_dir=tmp_path))
    mesh.ports = plan_ports(43000)
    mesh.database_url, mesh.nats_url = "postgresql://postgres@127.0.0.1:1/tips", "nats://x:2"
    secret = devsecrets.dev_providers_secret(tmp_path / "secrets.env")
    mesh.dev_providers = dev_standin(secret, (mesh.connections_redirect_uri(),), tmp_path / "g")
    mesh.dev_providers.base_url = "http://127.0.0.1:47000"
    env = mesh.child_env("integrations")
    providers = json.loads(env["TIPS_INTEGRATIONS_PROVIDERS"])
    assert set(providers) == set(DEV_CLIENTS)
    assert {p["client_secret"] for p in providers.values()} == {secret}
    assert providers["fitbit"]["token_url"] == "http://127.0.0.1:47000/oauth/token"
    assert (
        env["TIPS_INTEGRATIONS_REDIRECT_URI"] == "http://127.0.0.1:43000/app/?callback=connection"
    )
    assert json.loads(env["TIPS_INTEGRATIONS_RETURN_URIS"])[:2] == [
        "http://127.0.0.1:43000/app/#/connections",
        "http://localhost:43000/app/#/connections",
    ]
    # The secret stays with integrations (and the 0600 file): no other process has it.
    for name in (None, "events", "auth", GATEWAY):
        assert secret not in "".join(mesh.child_env(name).values())
    # The caller's own providers win: no stand-in is started for them.
    own = Mesh(UpOptions(env={"TIPS_INTEGRATIONS_PROVIDERS": "{}"}, run_dir=tmp_path))
    own.ports = mesh.ports
    asyncio.run(own._start_dev_providers())
    assert own.dev_providers is None
    assert own.child_env("integrations")["TIPS_INTEGRATIONS_PROVIDERS"] == "{}"


def test_cli_rejects_unknown_service(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", "nope"])
    assert exit_.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    assert cli.main(["migrate", "nope"]) == 2
    assert "unknown service nope" in capsys.readouterr().err


def test_cli_bench_lists_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "list"]) == 0
    assert "mesh_startup" in capsys.readouterr().out.split()
    assert cli.main(["bench", "no_such_scenario"]) == 2

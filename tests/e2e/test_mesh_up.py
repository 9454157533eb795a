"""`tips up` / `make up`: every service SERVING, then a clean stop, nothing left.

The mesh runs on free ports (--port-base) next to any developer's mesh, with
its own PostgreSQL and NATS (TIPS_DATABASE_URL / TIPS_NATS_URL are removed
from the environment so the local-servers path is covered). Three mesh
starts in all: one shared by the checks (each process killed once and
restarted, then stopped with SIGTERM), one stopped with SIGINT, one through
`make up`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import grpc
import httpx
import nats
import nats.errors
import nats.js.errors
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from kernel.settings import SERVICE_NAMES
from tests.e2e.meshutil import (
    ROOT,
    RunningMesh,
    start_mesh,
    stop_and_check,
    stop_if_running,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    running = start_mesh(tmp_path_factory.mktemp("mesh"))
    yield running
    stop_if_running(running)  # a test failed before the stop test


def _reflection_services(mesh: RunningMesh, name: str) -> list[str]:
    with mesh.channel(name) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))
    return [s.name for s in reply.list_services_response.service]


def test_table_lists_every_process(mesh: RunningMesh) -> None:
    text = "".join(mesh.output)
    for name in [*SERVICE_NAMES, "gateway", "postgres", "nats"]:
        assert f"\n{name} " in f"\n{text}", f"{name} missing from the table"
    assert mesh.port("gateway") == mesh.port_base
    assert mesh.port("auth") == mesh.port_base + 1


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_service_is_serving_with_reflection(mesh: RunningMesh, name: str) -> None:
    with mesh.channel(name) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    listed = _reflection_services(mesh, name)
    assert "grpc.health.v1.Health" in listed
    own = [s for s in listed if s.startswith(f"tips.{name}.v1.")]
    assert own, f"{name} lists no tips.{name}.v1 service: {listed}"
    with mesh.channel(name) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in own:
            per = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert per.status == health_pb2.HealthCheckResponse.SERVING, service


def test_gateway_health_readiness_and_404(mesh: RunningMesh) -> None:
    base = f"http://127.0.0.1:{mesh.port('gateway')}"
    with httpx.Client(base_url=base, timeout=5, trust_env=False) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert set(ready.json()["services"]) == set(SERVICE_NAMES)
        missing = client.get("/v1/no/such/route")
        assert missing.status_code == 404
        assert missing.json()["code"] == 5
        assert missing.json()["details"] == []


def test_a_user_rpc_without_identity_is_refused_clearly(mesh: RunningMesh) -> None:
    # Every RPC of the contract is built now; an RPC not built yet answering
    # UNIMPLEMENTED with its name is covered by the kernel's server tests.
    from tips.notifier.v1 import notifier_service_pb2, notifier_service_pb2_grpc

    with mesh.channel("notifier", as_="gateway") as channel:
        stub = notifier_service_pb2_grpc.NotifierServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.ListDevices(notifier_service_pb2.ListDevicesRequest(parent="users/u1"), timeout=5)
    assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert raised.value.details()


def test_behind_the_edge_no_call_is_taken_from_an_unverified_caller(mesh: RunningMesh) -> None:
    """The direct calls that worked before mutual TLS and declared callers."""
    from tips.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
    from tips.events.v1 import events_service_pb2, events_service_pb2_grpc
    from tips.profile.v1 import profile_service_pb2, profile_service_pb2_grpc

    profile_request = profile_service_pb2.GetProfileRequest(name="users/u_victim/profile")
    # No client certificate at all: the TLS handshake fails, no handler runs.
    plain = grpc.insecure_channel(f"127.0.0.1:{mesh.port('profile')}")
    with plain, pytest.raises(grpc.RpcError) as raised:
        profile_service_pb2_grpc.ProfileServiceStub(plain).GetProfile(profile_request, timeout=5)
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    # A mesh certificate, but not one the RPC lists (its proto's access.callers).
    refused = [
        (
            "events",
            "gateway",
            lambda ch: next(
                events_service_pb2_grpc.EventsInternalServiceStub(ch).ReplayAllSignals(
                    events_service_pb2.ReplayAllSignalsRequest(), timeout=5
                )
            ),
        ),
        (
            "auth",
            "events",
            lambda ch: auth_service_pb2_grpc.AuthInternalServiceStub(ch).RevokeUserSessions(
                auth_service_pb2.RevokeUserSessionsRequest(user="users/u_victim"), timeout=5
            ),
        ),
        (
            "profile",
            "notifier",
            lambda ch: profile_service_pb2_grpc.ProfileServiceStub(ch).GetProfile(
                profile_request, timeout=5
            ),
        ),
    ]
    for service, as_, call in refused:
        with mesh.channel(service, as_=as_) as channel, pytest.raises(grpc.RpcError) as raised:
            call(channel)
        assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED, (service, as_)
        assert f"'{as_}' may not call" in (raised.value.details() or "")
    # The gateway's own certificate with a forged identity header: refused too.
    with mesh.channel("profile", as_="gateway") as channel, pytest.raises(grpc.RpcError) as raised:
        profile_service_pb2_grpc.ProfileServiceStub(channel).GetProfile(
            profile_request, metadata=(("x-tips-user", "u_victim"),), timeout=5
        )
    assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "x-tips-user" in (raised.value.details() or "")


def _tips_login(mesh: RunningMesh, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tipsmesh.cli", "login", "--run-dir", str(mesh.run_dir), *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip


def test_a_newcomer_signs_in_with_tips_login_and_finds_the_demo_user(mesh: RunningMesh) -> None:
    started = time.monotonic()
    login = _tips_login(mesh, "--as", "demo")
    assert login.returncode == 0, login.stderr
    took = time.monotonic() - started
    token = login.stdout.strip()
    gateway = f"http://127.0.0.1:{mesh.port('gateway')}"
    with httpx.Client(
        base_url=gateway, headers={"Authorization": f"Bearer {token}"}, trust_env=False, timeout=10
    ) as http:
        consents = {
            c["name"].rsplit("/", 1)[1]: c["state"]
            for c in http.get("/v1/users/me/consents").json()["consents"]
        }
        assert consents["calendar-data-for-tips"] == "CONSENT_STATE_GRANTED"
        assert consents["fitness-data-for-tips"] == "CONSENT_STATE_GRANTED"
        signals = http.get("/v1/users/me/signals", params={"pageSize": 100}).json()["signals"]
        days = {s["startTime"][:10] for s in signals if s["kind"] == "SIGNAL_KIND_STEPS"}
        assert len(days) == 7, days  # a week of steps (and of sleep)
        tips = http.get("/v1/users/me/tips", params={"pageSize": 1}).json()["tips"]
        assert tips and tips[0]["name"].startswith("users/")
    # The same name is the same user every time, on either provider's stand-in.
    again = json.loads(_tips_login(mesh, "--as", "demo", "--json").stdout)
    assert again["user"] == json.loads((mesh.run_dir / "demo.json").read_text())["user"]
    alice = json.loads(_tips_login(mesh, "--as", "alice", "--provider", "apple", "--json").stdout)
    assert alice["user"] != again["user"] and alice["accessToken"]
    print(json.dumps({"tips_login_seconds": round(took, 2)}))


def test_tips_login_without_a_mesh_says_how_to_start_one(tmp_path: Path) -> None:
    login = subprocess.run(
        [sys.executable, "-m", "tipsmesh.cli", "login", "--run-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert login.returncode == 2
    assert "make up" in login.stderr


def test_logs_go_to_run_dir(mesh: RunningMesh) -> None:
    logs = mesh.run_dir / "logs"
    for name in [*SERVICE_NAMES, "gateway"]:
        lines = (logs / f"{name}.log").read_text().splitlines()
        assert any(json.loads(line).get("message") == "listening" for line in lines), name


def test_postgres_wants_passwords_and_no_service_holds_the_superusers(
    mesh: RunningMesh,
) -> None:
    secrets_env = mesh.secrets()
    superuser = secrets_env["LOCAL_POSTGRES_PASSWORD"]
    roles = json.loads(secrets_env["TIPS_DB_ROLE_PASSWORDS"])
    dev_client_secret = secrets_env["LOCAL_DEV_PROVIDERS_SECRET"]
    port = mesh.infra_ports()[0]

    async def logins() -> dict[str, bool]:
        async def ok(user: str, password: str | None) -> bool:
            try:
                conn = await asyncpg.connect(
                    host="127.0.0.1", port=port, user=user, password=password, database="tips"
                )
            except asyncpg.InvalidPasswordError:
                return False
            await conn.close()
            return True

        return {
            "postgres without password": await ok("postgres", None),
            "postgres": await ok("postgres", superuser),
            "tips_events without password": await ok("tips_events", None),
            "tips_events with profile's": await ok("tips_events", roles["profile"]),
            "tips_events": await ok("tips_events", roles["events"]),
        }

    assert asyncio.run(logins()) == {
        "postgres without password": False,
        "postgres": True,
        "tips_events without password": False,
        "tips_events with profile's": False,
        "tips_events": True,
    }
    # NATS: no anonymous client; a service's user cannot publish another's events.
    nats_passwords = json.loads(secrets_env["LOCAL_NATS_PASSWORDS"])
    nats_url = str(mesh.state["nats_url"])

    async def forge() -> tuple[bool, bool]:
        try:
            await nats.connect(nats_url, connect_timeout=2, allow_reconnect=False)
            anonymous = True
        except nats.errors.Error:
            anonymous = False
        nc = await nats.connect(
            nats_url, user="events", password=nats_passwords["events"], allow_reconnect=False
        )
        try:
            await nc.jetstream().publish(
                "tips.profile.v1.user_deleted", b"\x12\x0busers/u_victim", timeout=3
            )
            forged = True
        except (nats.errors.TimeoutError, nats.js.errors.Error):
            forged = False
        finally:
            await nc.close()
        return anonymous, forged

    assert asyncio.run(forge()) == (False, False)
    checked = 0
    for proc in mesh.processes():
        if "tipsmesh.cli" not in " ".join(proc.cmdline()) or "serve" not in proc.cmdline():
            continue
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes().decode(errors="replace")
        assert superuser not in environ, proc.cmdline()
        name = proc.cmdline()[-1]
        others = [pw for service, pw in roles.items() if service != name]
        assert not [pw for pw in others if pw in environ], f"{name} holds another role's password"
        foreign = [pw for user, pw in nats_passwords.items() if user != name and pw in environ]
        assert not foreign, f"{name} holds another process's NATS password"
        assert nats_passwords[name] in environ  # and logs in with its own
        # The dev providers' client secret: integrations' alone.
        assert (dev_client_secret in environ) == (name == "integrations"), name
        checked += 1
    assert checked == len(SERVICE_NAMES) + 1  # the services and the gateway
    logs = sorted((mesh.run_dir / "logs").glob("*.log"))
    assert logs and not [log for log in logs if dev_client_secret in log.read_text()]


class Prober:
    """Every process's health, probed round after round from a thread: the load a
    restart must not disturb, and the record of who answered when."""

    def __init__(self, mesh: RunningMesh) -> None:
        self.mesh = mesh
        self.failures: list[tuple[str, float]] = []
        self.probes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def ok(self, name: str) -> bool:
        try:
            if name == "gateway":
                url = f"http://127.0.0.1:{self.mesh.port(name)}/healthz"
                return httpx.get(url, timeout=2, trust_env=False).status_code == 200
            with self.mesh.channel(name) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=2
                )
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
        except (grpc.RpcError, httpx.HTTPError):
            return False

    def _run(self) -> None:
        while not self._stop.is_set():
            for name in [*SERVICE_NAMES, "gateway"]:
                self.probes += 1
                if not self.ok(name):
                    self.failures.append((name, time.monotonic()))

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_a_killed_process_comes_back_while_the_others_keep_serving(mesh: RunningMesh) -> None:
    """SIGKILL each process in turn (its whole group) under a steady probe of all."""
    windows: dict[str, tuple[float, float]] = {}
    with Prober(mesh) as prober:
        for name in [*SERVICE_NAMES, "gateway"]:
            pid = json.loads((mesh.run_dir / "mesh.json").read_text())["pids"][name]
            killed = time.monotonic()
            os.killpg(pid, signal.SIGKILL)
            deadline = killed + 90
            while True:
                now_pid = json.loads((mesh.run_dir / "mesh.json").read_text())["pids"][name]
                if now_pid != pid and prober.ok(name):
                    break
                assert time.monotonic() < deadline, f"{name} not back:\n{''.join(mesh.output)}"
                time.sleep(0.1)
            windows[name] = (killed, time.monotonic())
        assert mesh.proc.poll() is None  # the mesh itself never stopped
    # Only the killed process, while it was down, failed to answer (the gateway's
    # /healthz is its own liveness, not its upstreams').
    stray = [
        (name, round(at - windows[name][0], 2))
        for name, at in prober.failures
        if not windows[name][0] <= at <= windows[name][1] + 1.0
    ]
    assert not stray, stray
    assert prober.probes > 10 * len(windows)
    state = json.loads((mesh.run_dir / "mesh.json").read_text())
    assert state["restarts"] == {name: 1 for name in windows}
    output = "".join(mesh.output)
    assert "profile exited unexpectedly with code -9" in output and "restarting profile" in output
    took = {name: round(end - start, 2) for name, (start, end) in windows.items()}
    print(json.dumps({"restart_seconds": took}))


def test_sigterm_stops_everything(mesh: RunningMesh) -> None:
    code = stop_and_check(mesh, signal.SIGTERM)
    assert code == 0, "".join(mesh.output)


def test_sigint_stops_everything(tmp_path: Path) -> None:
    running = start_mesh(tmp_path)
    code = stop_and_check(running, signal.SIGINT)
    assert code == 0, "".join(running.output)


def test_make_up_reaches_serving_and_stops(tmp_path: Path) -> None:
    # -o: treat the venv as up to date (it is: we run from it); never reinstall here.
    running = start_mesh(tmp_path, "make", "--no-print-directory", "-o", ".venv/.installed", "up")
    assert not any("pip install" in line for line in running.output)
    # make forwards SIGTERM to `tips up`, which stops the mesh.
    stop_and_check(running, signal.SIGTERM)

"""The image's install runs the whole mesh (issue 14: the image contains everything a
service needs).

As the Dockerfile does: the product's wheel, built from the source, installed with
its declared dependencies from the package index (`pip install WHEEL`; here pip
keeps its cache) into a clean venv: no pip, no system site-packages, nothing of
the checkout. The mesh is `tips up` from that venv's console script, run in a
directory outside the checkout, with no PYTHONPATH and the checkout's venv off
PATH, against a PostgreSQL and a NATS of its own named by TIPS_DATABASE_URL /
TIPS_NATS_URL, as compose gives the image its servers (the image has no `[local]`
extra). Every service reports SERVING on gRPC health, the gateway is ready, a
user signs in through the gateway and the development identity provider and gets
a tip scored by the model `tips up` exported from the policy's prior (an installed
package carries no models/), and no process of the mesh imported or loaded
anything from the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kernel.settings import SERVICE_NAMES
from tests.e2e.meshutil import (
    STOP_TIMEOUT,
    RunningMesh,
    launch,
    mesh_env,
    new_run_dir,
    port_base,
    stop_if_running,
)
from tests.support.wheels import (
    ROOT,
    clean_env,
    new_venv,
    ok,
    pip_install,
    product_wheel,
    run,
    site_packages,
)
from tipsmesh.localinfra import LocalNats, LocalPostgres

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]

# Seconds each step took, printed as JSON at the end (docs/operations.md, "The image").
TIMINGS: dict[str, float] = {}


@dataclass(frozen=True)
class Installed:
    venv: Path
    site_packages: Path
    wheel_bytes: int

    @property
    def tips(self) -> Path:
        return self.venv / "bin" / "tips"


def _under(path: str | Path, root: Path) -> bool:
    return Path(path).resolve().is_relative_to(root)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    began = time.monotonic()
    wheel = product_wheel(tmp_path_factory.mktemp("wheel"))
    TIMINGS["wheel_s"] = time.monotonic() - began
    began = time.monotonic()
    venv = tmp_path_factory.mktemp("installed") / "venv"
    pip_install(new_venv(venv), wheel)
    TIMINGS["install_s"] = time.monotonic() - began
    yield Installed(venv, site_packages(venv), wheel.stat().st_size)
    shutil.rmtree(venv, ignore_errors=True)  # some 370 MB


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[str, str]]:
    """A PostgreSQL and a NATS of this module's own (the mesh creates its real
    streams, roles and schemas: not on the session's shared servers)."""
    # Under /tmp, not pytest's 0700 tmp dir: as root the server runs as another user.
    pg_dir = Path(tempfile.mkdtemp(prefix="tips-pg-"))
    nats_dir = Path(tempfile.mkdtemp(prefix="tips-nats-"))
    try:
        with LocalPostgres(pg_dir) as pg, LocalNats(nats_dir) as nats:
            yield pg.url, nats.url
    finally:
        shutil.rmtree(pg_dir, ignore_errors=True)
        shutil.rmtree(nats_dir, ignore_errors=True)


def _env(installed: Installed, tmp: Path, base: int, servers: tuple[str, str]) -> dict[str, str]:
    """The caller's environment less TIPS_*, PYTHONPATH and the checkout on PATH."""
    env = clean_env(mesh_env(base))
    env.pop("VIRTUAL_ENV", None)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and not _under(p, ROOT)]
    env["PATH"] = os.pathsep.join([str(installed.venv / "bin"), *path])
    env["TIPS_DATABASE_URL"], env["TIPS_NATS_URL"] = servers
    env["XDG_STATE_HOME"] = str(tmp / "state")  # nothing into the caller's home
    return env


@dataclass
class Mesh:
    running: RunningMesh
    env: dict[str, str]
    cwd: Path


@pytest.fixture(scope="module")
def mesh(
    installed: Installed,
    servers: tuple[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("outside")
    cwd = tmp / "cwd"
    cwd.mkdir()
    base = port_base()
    run_dir = new_run_dir(tmp)
    env = _env(installed, tmp, base, servers)
    argv = [str(installed.tips), "up", "--run-dir", str(run_dir), "--start-timeout", "120"]
    began = time.monotonic()
    try:
        running = launch(argv, env, run_dir, base, cwd=cwd)
    except BaseException:  # pytest.fail with the output: the logs are in it
        shutil.rmtree(run_dir.parent, ignore_errors=True)
        raise
    TIMINGS["serving_s"] = time.monotonic() - began
    yield Mesh(running, env, cwd)
    stop_if_running(running)  # a test failed before the stop test
    shutil.rmtree(run_dir.parent, ignore_errors=True)


def test_the_venv_holds_the_wheel_and_nothing_of_the_checkout(installed: Installed) -> None:
    config = (installed.venv / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in config
    for pth in installed.site_packages.glob("*.pth"):
        assert str(ROOT) not in pth.read_text(), pth
    probe = (
        "import importlib.metadata, importlib.util, json, sys\n"
        "dist = importlib.metadata.distribution('tips-mesh')\n"
        "tops = dist.read_text('top_level.txt').split()\n"
        "found = {}\n"
        "for name in tops:\n"
        "    spec = importlib.util.find_spec(name)\n"
        "    found[name] = [*([spec.origin] if spec.origin else []),\n"
        "                   *(spec.submodule_search_locations or [])]\n"
        "import tipsmesh.cli\n"
        "found['tipsmesh.cli'] = [tipsmesh.cli.__file__]\n"
        "print(json.dumps({'path': sys.path, 'found': found,\n"
        "                  'direct_url': json.loads(dist.read_text('direct_url.json'))}))\n"
    )
    python = installed.venv / "bin" / "python"
    seen = json.loads(ok(run(python, "-c", probe, cwd=installed.venv.parent)))
    assert not [p for p in seen["path"] if p and _under(p, ROOT)], seen["path"]
    assert {"kernel", "gateway", "services", "tipsmesh", "tips", "tipsclient"} <= set(seen["found"])
    for name, locations in seen["found"].items():
        assert locations, name
        for location in locations:
            assert _under(location, installed.site_packages), (name, location)
    # Installed from the wheel file, not an editable install of a directory.
    assert seen["direct_url"]["url"].endswith(".whl"), seen["direct_url"]
    assert "dir_info" not in seen["direct_url"]


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_every_service_serves_from_the_install(mesh: Mesh, name: str) -> None:
    with mesh.running.channel(name) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=30
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_user_signs_in_through_the_gateway_and_gets_a_tip(
    mesh: Mesh, installed: Installed
) -> None:
    """`tips login` (the installed one) signs in through the gateway with the
    development identity provider, as the demo user `tips up` seeded through it."""
    running = mesh.running
    login = run(
        installed.tips, "login", "--run-dir", running.run_dir, "--as", "demo",
        cwd=mesh.cwd, env=mesh.env, timeout=120,
    )  # fmt: skip
    token = ok(login).strip()
    gateway = f"http://127.0.0.1:{running.port('gateway')}"
    with httpx.Client(base_url=gateway, timeout=30, trust_env=False) as http:
        ready = http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert set(ready.json()["services"]) == set(SERVICE_NAMES)
        answer = http.get(
            "/v1/users/me/tips",
            params={"pageSize": 1},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert answer.status_code == 200, answer.text
    (tip,) = answer.json()["tips"]
    assert tip["name"].startswith("users/") and tip["title"]
    # Scored by the model `tips up` exported from the policy's prior: no checkout to copy.
    assert tip["modelVersion"] == "models/tip_scorer/versions/1"
    assert (running.run_dir / "models" / "tip_scorer" / "1" / "model.onnx").is_file()


def _mesh_processes(running: RunningMesh) -> list[psutil.Process]:
    root = psutil.Process(running.proc.pid)
    return [root, *root.children(recursive=True)]


def test_no_process_of_the_mesh_runs_anything_from_the_checkout(
    mesh: Mesh, installed: Installed
) -> None:
    procs = _mesh_processes(mesh.running)
    pids = mesh.running.state["pids"]
    assert isinstance(pids, dict)
    assert set(pids) == {*SERVICE_NAMES, "gateway"}
    assert {p.pid for p in procs} >= set(pids.values())
    python = str(installed.venv / "bin" / "python")
    services = set(pids.values())
    checked = set()
    for proc in procs:
        try:
            described = (proc.pid, proc.cmdline())
            assert proc.cmdline()[0] == python, described
            assert not _under(proc.cwd(), ROOT), described
            assert "PYTHONPATH" not in proc.environ(), described
            mapped = {m.path for m in proc.memory_maps(grouped=True) if m.path.startswith("/")}
        except psutil.NoSuchProcess:
            continue  # a short-lived helper that finished meanwhile (the services do not)
        assert not [m for m in mapped if _under(m, ROOT)], described
        # Its native extensions (grpc's at least) come from the clean venv.
        assert [m for m in mapped if _under(m, installed.site_packages)], described
        checked.add(proc.pid)
    assert services <= checked, "a service process went away during the check"


def test_the_mesh_stops_cleanly(mesh: Mesh, installed: Installed) -> None:
    procs = _mesh_processes(mesh.running)
    mesh.running.proc.send_signal(signal.SIGTERM)
    code = mesh.running.proc.wait(STOP_TIMEOUT)
    _, alive = psutil.wait_procs(procs, timeout=10)
    assert code == 0, "".join(mesh.running.output)
    assert not alive, [(p.pid, p.cmdline()) for p in alive]
    venv_bytes = sum(f.stat().st_size for f in installed.venv.rglob("*") if f.is_file())
    print(
        json.dumps(
            {
                **{k: round(v, 1) for k, v in TIMINGS.items()},
                "wheel_bytes": installed.wheel_bytes,
                "venv_bytes": venv_bytes,
            }
        )
    )

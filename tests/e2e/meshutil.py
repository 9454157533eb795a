"""Starting and stopping a whole mesh from tests: `tips up` on free ports, checked clean.

Shared by the e2e modules. The mesh gets its own PostgreSQL and NATS
(TIPS_* variables of the caller's environment are dropped, so the
local-servers path is covered); ``extra_env`` adds settings for the mesh.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
import pytest

from kernel.settings import SERVICE_NAMES
from tipsmesh.up import READY_LINE, port_taken

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 150.0
STOP_TIMEOUT = 45.0


def port_base() -> int:
    """A base whose ports (the gateway and every service) are all free right now."""
    for _ in range(200):
        base = random.randrange(20000, 30000)
        if not any(port_taken(base + i) for i in range(len(SERVICE_NAMES) + 1)):
            return base
    raise RuntimeError("no free port range found")


def mesh_env(base: int, extra_env: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIPS_")}
    env.update(extra_env or {})
    env["TIPS_PORT_BASE"] = str(base)
    env["TIPS_LOG_FORMAT"] = "json"
    return env


@dataclass
class RunningMesh:
    proc: subprocess.Popen[str]
    run_dir: Path
    port_base: int
    output: list[str] = field(default_factory=list)
    state: dict[str, object] = field(default_factory=dict)

    def port(self, name: str) -> int:
        ports = self.state["ports"]
        assert isinstance(ports, dict)
        return int(ports[name])

    def channel(self, name: str, as_: str = "operator") -> grpc.Channel:
        """A blocking mTLS channel to service ``name``, presenting ``as_``'s certificate
        (from the run dir's ``tls/``, as `tips up` issued it)."""
        tls = self.run_dir / "tls"
        credentials = grpc.ssl_channel_credentials(
            root_certificates=(tls / "ca.pem").read_bytes(),
            private_key=(tls / f"{as_}.key").read_bytes(),
            certificate_chain=(tls / f"{as_}.pem").read_bytes(),
        )
        return grpc.secure_channel(
            f"127.0.0.1:{self.port(name)}",
            credentials,
            options=[("grpc.ssl_target_name_override", name)],
        )

    def infra_ports(self) -> list[int]:
        ports = []
        for key in ("database_url", "nats_url"):
            url = str(self.state[key])
            ports.append(int(url.rsplit(":", 1)[1].split("/")[0]))
        return ports

    def secrets(self) -> dict[str, str]:
        """The run dir's generated secrets (``secrets.env``)."""
        lines = (self.run_dir / "secrets.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    def admin_database_url(self) -> str:
        """The local PostgreSQL's superuser URL (mesh.json hides its password)."""
        password = urllib.parse.quote(self.secrets()["LOCAL_POSTGRES_PASSWORD"], safe="")
        return f"postgresql://postgres:{password}@127.0.0.1:{self.infra_ports()[0]}/tips"

    def all_ports(self) -> list[int]:
        ports = self.state["ports"]
        assert isinstance(ports, dict)
        return [int(p) for p in ports.values()] + self.infra_ports()

    def processes(self) -> list[psutil.Process]:
        """Every process of the mesh: the launcher's tree and the detached postmaster's."""
        root = psutil.Process(self.proc.pid)
        procs = [root, *root.children(recursive=True)]
        pid_file = Path(str(self.state["postgres_pid_file"]))
        postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
        return [*procs, postmaster, *postmaster.children(recursive=True)]


def start_mesh(tmp: Path, *command: str, extra_env: dict[str, str] | None = None) -> RunningMesh:
    base = port_base()
    # Not under pytest's tmp dir: another pytest run on the machine may reset
    # /tmp/pytest-of-<user> to owner-only, and PostgreSQL (its own system user)
    # could then no longer reach its data dir to stop. `tmp` keeps a pointer.
    run_dir = new_run_dir(tmp)
    argv = list(command) or [
        sys.executable, "-m", "tipsmesh.cli", "up", "--run-dir", str(run_dir),
    ]  # fmt: skip
    env = mesh_env(base, extra_env)
    if command:  # make up: the run dir comes from the repo default otherwise
        env["TIPS_RUN_DIR"] = str(run_dir)
    return launch(argv, env, run_dir, base)


def new_run_dir(tmp: Path) -> Path:
    """A fresh run dir outside pytest's tmp dir (see start_mesh); ``tmp`` points at it."""
    run_dir = Path(tempfile.mkdtemp(prefix="tips-e2e-")) / "run"
    (tmp / "run-dir.txt").write_text(str(run_dir))
    return run_dir


def launch(
    argv: list[str], env: dict[str, str], run_dir: Path, base: int, cwd: Path = ROOT
) -> RunningMesh:
    """Run ``argv`` (`tips up` or `make up`) in ``cwd`` until it reports SERVING; its
    output kept."""
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    mesh = RunningMesh(proc, run_dir, base)
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            mesh.output.append(line)
            if line.startswith(READY_LINE):
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT
    while not ready.wait(0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{' '.join(argv)} did not reach SERVING:\n{''.join(mesh.output)}")
    mesh.state = json.loads((run_dir / "mesh.json").read_text())
    return mesh


def stop_and_check(mesh: RunningMesh, sig: signal.Signals, pid: int | None = None) -> int:
    """Signal the mesh, wait, and assert no process, port or server is left."""
    procs = mesh.processes()
    ports = mesh.all_ports()
    assert len(procs) >= len(SERVICE_NAMES) + 3  # services, gateway, nats, postgres
    started = time.monotonic()
    os.kill(pid or mesh.proc.pid, sig)
    try:
        code = mesh.proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        mesh.proc.kill()
        pytest.fail(f"mesh did not stop within {STOP_TIMEOUT}s:\n{''.join(mesh.output)}")
    took = time.monotonic() - started
    _, alive = psutil.wait_procs(procs, timeout=5)
    assert not alive, f"left running: {[(p.pid, p.cmdline()) for p in alive]}"
    leftovers = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(mesh.run_dir) in arg for arg in proc.info["cmdline"] or []):
            leftovers.append((proc.pid, proc.info["cmdline"]))
    assert not leftovers, f"processes still using the run dir: {leftovers}"
    assert not [p for p in ports if port_taken(p)], "ports still in use"
    assert not Path(str(mesh.state["postgres_pid_file"])).exists(), "PostgreSQL still running"
    assert not (mesh.run_dir / "mesh.json").exists()
    assert took < STOP_TIMEOUT
    shutil.rmtree(mesh.run_dir.parent, ignore_errors=True)
    return code


def stop_if_running(mesh: RunningMesh) -> None:
    """After a module's tests: a mesh a failed test left running is stopped (SIGTERM,
    then SIGKILL after ``STOP_TIMEOUT``)."""
    if mesh.proc.poll() is None:
        mesh.proc.send_signal(signal.SIGTERM)
        try:
            mesh.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            mesh.proc.kill()

"""``tips up``: the whole mesh on one machine, each service its own process.

Steps: start PostgreSQL (``LocalPostgres``) unless ``TIPS_DATABASE_URL`` is
set and NATS (``LocalNats``) unless ``TIPS_NATS_URL`` is set, with their data
under ``RUN_DIR`` (default ``.run/``; reused across runs, ``--fresh`` wipes
it); run ``tips migrate``; start every service and the gateway as
``python -m tipsmesh.cli serve NAME`` in its own process group, logging to
``RUN_DIR/logs/NAME.log``; wait until each is SERVING on gRPC health (the
gateway: ``GET /readyz`` 200); print a table; keep them running: a child that
exits on its own is reported and restarted with backoff while the others keep
serving (``Mesh.watch``; ``mesh.json`` counts the restarts).

Only SIGINT/SIGTERM stop the mesh: everything is stopped in reverse
dependency order: gateway, services (SIGTERM,
then SIGKILL to the process group after ``stop_timeout``), NATS, PostgreSQL.
Children also get SIGTERM from the kernel (``setpriv --pdeathsig``) if
``tips up`` itself is SIGKILLed; PostgreSQL and NATS left behind that way are
stopped by the next ``tips up`` on the same run dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from kernel.access import OPERATOR
from kernel.bus_permissions import authorization_block, mesh_user
from kernel.settings import DEFAULT_PORTS, GATEWAY_DEFAULT_PORT, SERVICE_NAMES, Settings
from tipsmesh import devcerts, devlogin, devsecrets
from tipsmesh.devidp import OidcIssuer
from tipsmesh.devproviders import ProviderStandIn, dev_provider_settings, dev_standin
from tipsmesh.health import grpc_serving, http_ok
from tipsmesh.localinfra import LocalInfraError, LocalNats, LocalPostgres, free_ports

__all__ = [
    "GATEWAY",
    "ROOT",
    "Mesh",
    "UpError",
    "UpOptions",
    "log_tail",
    "plan_ports",
    "up",
]

ROOT = Path(__file__).resolve().parents[1]
GATEWAY = "gateway"
READY_LINE = "all SERVING in"
# Restart backoff of a crashed child: first delay, cap, and how long a run
# must last before the next crash counts as new (delay back to the first).
RESTART_FIRST_S = 0.5
RESTART_MAX_S = 30.0
RESTART_RESET_S = 60.0
HOST = "127.0.0.1"
T = TypeVar("T")


class UpError(RuntimeError):
    """The mesh could not be started; the message says which part and why."""


@dataclass(frozen=True)
class UpOptions:
    run_dir: Path = ROOT / ".run"
    gateway: bool = True
    # None: DEFAULT_PORTS and 8080; else gateway on BASE, each service on BASE+1+its
    # place in SERVICE_NAMES.
    port_base: int | None = None
    free_ports: bool = False
    fresh: bool = False
    start_timeout: float = 90.0
    stop_timeout: float = 15.0
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


def plan_ports(
    port_base: int | None, *, free: bool = False, gateway: bool = True
) -> dict[str, int]:
    """Port of each process of the mesh (services, then the gateway)."""
    names = [*SERVICE_NAMES, *([GATEWAY] if gateway else [])]
    if free:
        # All bound at once: ports taken one at a time can repeat (the one just
        # released is free again for the next).
        return dict(zip(names, free_ports(len(names)), strict=True))
    if port_base is None:
        ports = dict(DEFAULT_PORTS)
        ports[GATEWAY] = GATEWAY_DEFAULT_PORT
    else:
        if not 1024 <= port_base <= 65535 - len(SERVICE_NAMES):
            raise UpError(
                f"port base {port_base} out of range (1024..{65535 - len(SERVICE_NAMES)})"
            )
        ports = {name: port_base + i for i, name in enumerate(SERVICE_NAMES, start=1)}
        ports[GATEWAY] = port_base
    return {name: ports[name] for name in names}


def port_taken(port: int, host: str = HOST) -> bool:
    """True when nothing can listen on ``port`` (as servers bind: SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def check_ports(ports: Mapping[str, int]) -> None:
    taken = [f"{port} ({name})" for name, port in ports.items() if port_taken(port)]
    if taken:
        raise UpError(
            f"port{'s' if len(taken) > 1 else ''} already in use: {', '.join(taken)}. "
            "Stop what listens there (another `tips up`?), or choose other ports with "
            "--port-base N / TIPS_PORT_BASE=N, or --free-ports"
        )


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def _pdeathsig_prefix() -> list[str]:
    # The kernel SIGTERMs the child if `tips up` dies without cleaning up (SIGKILL).
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


async def _finish_in_thread(fn: Callable[[], T]) -> T:
    """Run blocking ``fn`` in a thread; on cancellation still wait for it.

    Starting a server must not be abandoned half-way: the stop that follows
    would race with it.
    """
    task = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await task
        raise


@dataclass
class Child:
    """One process of the mesh."""

    name: str
    port: int
    log_path: Path
    proc: asyncio.subprocess.Process

    @property
    def url(self) -> str:
        scheme = "http" if self.name == GATEWAY else "grpc"
        return f"{scheme}://{HOST}:{self.port}"

    def exited(self) -> bool:
        return self.proc.returncode is not None

    def failure(self, what: str) -> UpError:
        return UpError(
            f"{self.name} {what}\n--- tail of {self.log_path} ---\n{log_tail(self.log_path)}"
        )


class Mesh:
    """The processes and servers ``tips up`` runs; ``start`` then ``stop``."""

    def __init__(self, options: UpOptions) -> None:
        self.options = options
        self.run_dir = options.run_dir.absolute()
        self.log_dir = self.run_dir / "logs"
        self.models_dir = self.run_dir / "models"
        self.ports: dict[str, int] = {}
        self.children: dict[str, Child] = {}
        self.postgres: LocalPostgres | None = None
        self.nats: LocalNats | None = None
        self.database_url = ""
        self.nats_url = ""
        self.started_at = time.monotonic()
        self.serving_after: float | None = None
        self.phases: dict[str, float] = {}
        self._phase_start = self.started_at
        self.restarts: dict[str, int] = {}
        # One mTLS identity per process, and `operator` for `tips up`'s own probes.
        self.tls_dir = self.run_dir / "tls"
        self.certs: dict[str, devcerts.MeshIdentity] = {}
        self._probe_tls: Settings | None = None
        # Local Google and Apple stand-ins, so a newcomer can sign in (tips login).
        self.dev_idps: dict[str, OidcIssuer] = {}
        # Local Google Calendar and Fitbit stand-ins, so accounts can be connected.
        self.dev_providers: ProviderStandIn | None = None
        self.demo: dict[str, object] | None = None

    # ----- start

    async def start(self) -> None:
        self.started_at = self._phase_start = time.monotonic()
        opts = self.options
        self.ports = plan_ports(opts.port_base, free=opts.free_ports, gateway=opts.gateway)
        check_ports(self.ports)
        self._prepare_run_dir()
        await asyncio.to_thread(self._ensure_certs)
        self._probe_tls = self.certs[OPERATOR].settings()
        await self._start_infra()
        await self._start_dev_idps()
        await self._start_dev_providers()
        self._phase("infra")
        await self._migrate()
        self._phase("migrate")
        for name in self.ports:
            await self._spawn(name)
        self._write_state()
        await self._wait_serving()
        self._phase("services")
        self.serving_after = time.monotonic() - self.started_at
        await self._seed_demo()
        self._write_state()

    async def _start_dev_idps(self) -> None:
        """Development identity providers, in this process (tipsmesh.devidp)."""
        for name in devlogin.PROVIDERS:
            # With its sign-in page: the web app signs in through a browser.
            idp = OidcIssuer(name, [devlogin.DEV_CLIENT_ID], sign_in_page=True)
            await idp.start()
            self.dev_idps[name] = idp

    async def _start_dev_providers(self) -> None:
        """Development data providers, in this process (tipsmesh.devproviders).

        Only when the caller configures no providers of their own, and with the
        gateway (the web app is where a browser comes back to).
        """
        if "TIPS_INTEGRATIONS_PROVIDERS" in self.options.env or GATEWAY not in self.ports:
            return
        secret = devsecrets.dev_providers_secret(self.run_dir / "secrets.env")
        standin = dev_standin(
            secret, (self.connections_redirect_uri(),), self.run_dir / "devproviders.json"
        )
        await standin.start()
        self.dev_providers = standin

    def web_origins(self) -> list[str]:
        """The web app's origins: either loopback name, on the gateway's port."""
        return [f"http://{h}:{self.ports[GATEWAY]}" for h in (HOST, "localhost")]

    def connections_redirect_uri(self) -> str:
        """Where the dev providers send the browser back: the web app, which completes
        the connection (``/v1/connections:callback``) and goes on to the return URI."""
        return f"{self.web_origins()[0]}/app/?callback=connection"

    async def _seed_demo(self) -> None:
        """The demo user (consents, a week of signals), once per run dir."""
        if GATEWAY not in self.ports or not self._dev_idps_in_use():
            return
        gateway = f"http://{HOST}:{self.ports[GATEWAY]}"
        urls = {name: idp.issuer for name, idp in self.dev_idps.items()}
        marker = self.run_dir / "demo.json"
        self.demo = await asyncio.to_thread(devlogin.load_demo, marker)
        if self.demo is not None:
            return
        try:
            self.demo = await devlogin.seed_demo(gateway, urls)
        except (devlogin.LoginError, OSError, ValueError, KeyError) as exc:
            # The mesh serves without it; say so instead of failing the start.
            print(f"tips up: the demo user could not be seeded: {exc}", file=sys.stderr)
            return
        await asyncio.to_thread(marker.write_text, json.dumps(self.demo))

    def _dev_idps_in_use(self) -> bool:
        """Whether the auth service was pointed at the dev providers (not the caller's)."""
        return "TIPS_AUTH_GOOGLE_ISSUER" not in self.options.env and bool(self.dev_idps)

    def _ensure_certs(self) -> None:
        if not self.certs:
            names = [*SERVICE_NAMES, GATEWAY, OPERATOR]
            self.certs = devcerts.ensure_mesh_certs(self.tls_dir, names)

    def _phase(self, name: str) -> None:
        # Seconds each start phase took (in mesh.json; the bench reports them).
        now = time.monotonic()
        self.phases[name] = round(now - self._phase_start, 3)
        self._phase_start = now

    def _prepare_run_dir(self) -> None:
        state = self.run_dir / "mesh.json"
        if state.exists():
            with contextlib.suppress(ValueError, OSError):
                owner = int(json.loads(state.read_text()).get("pid", 0))
                if owner and owner != os.getpid() and _alive(owner):
                    raise UpError(
                        f"another `tips up` (pid {owner}) is running in {self.run_dir}; "
                        "stop it or use --run-dir"
                    )
        if self.options.fresh:
            for sub in ("postgres", "nats", "models", "mlflow"):
                shutil.rmtree(self.run_dir / sub, ignore_errors=True)
        # The mesh exports and promotes models: into its own copy of the model
        # repository, never into the repo's models/ (which seeds it).
        if not self.models_dir.exists():
            seed_model_repository(self.models_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for old in self.log_dir.glob("*.log"):
            old.unlink()

    async def _start_infra(self) -> None:
        try:
            await self._start_servers()
        except LocalInfraError as exc:
            raise UpError(str(exc)) from None

    async def _start_servers(self) -> None:
        env = self.options.env
        self.database_url = env.get("TIPS_DATABASE_URL", "")
        if not self.database_url:
            pg = LocalPostgres(
                self.run_dir / "postgres",
                password=devsecrets.superuser_password(self.run_dir / "secrets.env"),
            )
            # A server left by a `tips up` that was SIGKILLed: stop it first
            # (a stale pid file makes this fail; start copes with that).
            with contextlib.suppress(LocalInfraError):
                await _finish_in_thread(pg.stop)
            self.postgres = pg
            self.database_url = await _finish_in_thread(pg.start)
        self.nats_url = env.get("TIPS_NATS_URL", "")
        if not self.nats_url:
            nats = LocalNats(self.run_dir / "nats", authorization=self._nats_users())
            await asyncio.to_thread(_stop_stale_nats, nats.store_dir)
            self.nats = nats
            self.nats_url = await _finish_in_thread(nats.start)

    def child_env(self, name: str | None) -> dict[str, str]:
        """The environment of a child: the caller's, plus the mesh's addresses."""
        env = dict(self.options.env)
        env.pop("TIPS_SERVICE", None)
        env.pop("TIPS_PORT", None)
        env.update(
            TIPS_DATABASE_URL=self.database_url,
            TIPS_NATS_URL=self.nats_url,
            TIPS_HOST=HOST,
            PYTHONUNBUFFERED="1",
        )
        devsecrets.fill(env, self.run_dir / "secrets.env")
        for setting in MODEL_REPOSITORY_SETTINGS:
            env.setdefault(setting, str(self.models_dir))
        # The model registry goes with the run's model repository (--fresh wipes both).
        mlflow_db = self.run_dir / "mlflow" / "mlflow.db"
        env.setdefault("TIPS_ML_PIPELINES_MLFLOW_URI", f"sqlite:///{mlflow_db}")
        # Fold online learning into the served model regularly (decision 9).
        env.setdefault("TIPS_RECOMMENDER_EXPORT_INTERVAL_SECONDS", "300")
        # The outbox relay publishes from its own process: ingest and publishing
        # each get a core (docs/durable-log.md).
        env.setdefault("TIPS_EVENTS_RELAY_PROCESS", "true")
        for service in SERVICE_NAMES:
            env[f"TIPS_{service.upper()}_ADDR"] = f"{HOST}:{self.ports[service]}"
        if GATEWAY in self.ports:
            env["TIPS_GATEWAY_PORT"] = str(self.ports[GATEWAY])
            # The web app (`make web` builds it), at /app/ on the gateway.
            env.setdefault("TIPS_GATEWAY_WEB_DIR", str(ROOT / "web" / "dist"))
        if name is not None and name != GATEWAY:
            env["TIPS_SERVICE"] = name
            env["TIPS_PORT"] = str(self.ports[name])
        _own_metrics_port(env, name)
        # A development mesh: local stand-ins are accepted (the identity providers).
        env["TIPS_DEV_MODE"] = "1"
        if name == "auth" and self._dev_idps_in_use():
            for provider, idp in self.dev_idps.items():
                env[f"TIPS_AUTH_{provider.upper()}_ISSUER"] = idp.issuer
                env[f"TIPS_AUTH_{provider.upper()}_CLIENT_IDS"] = json.dumps(
                    [devlogin.DEV_CLIENT_ID]
                )
                env[f"TIPS_AUTH_{provider.upper()}_WEB_CLIENT_ID"] = devlogin.DEV_CLIENT_ID
            if GATEWAY in self.ports:
                # The web app's sign-in lands back on it (either loopback name).
                origins = self.web_origins()
                env["TIPS_AUTH_WEB_REDIRECT_URIS"] = json.dumps([f"{o}/app/" for o in origins])
        if name == "integrations" and self.dev_providers is not None:
            # OAuth clients at the dev providers; the browser returns to the web app.
            env["TIPS_INTEGRATIONS_PROVIDERS"] = json.dumps(
                dev_provider_settings(
                    self.dev_providers.base_url,
                    devsecrets.dev_providers_secret(self.run_dir / "secrets.env"),
                )
            )
            env["TIPS_INTEGRATIONS_REDIRECT_URI"] = self.connections_redirect_uri()
            returns = [f"{o}/app/#/connections" for o in self.web_origins()]
            env["TIPS_INTEGRATIONS_RETURN_URIS"] = json.dumps(
                [*returns, "tips://connections/callback"]
            )
        # Each process gets its own secrets only (no superuser password for a service).
        env = devsecrets.for_process(env, name)
        if name is not None:
            # Its own certificate and key: every hop is mutual TLS (kernel.tls).
            self._ensure_certs()
            env.update(self.certs[name].settings_env())
        if self.nats is not None and name is not None:
            # Our NATS: this process logs in as itself (kernel.bus_permissions).
            env["TIPS_NATS_USER"] = name
            env["TIPS_NATS_PASSWORD"] = devsecrets.nats_passwords(self.run_dir / "secrets.env")[
                name
            ]
        return env

    def _nats_users(self) -> str:
        """The local NATS's users: each publishes its own events, reads what it consumes."""
        passwords = devsecrets.nats_passwords(self.run_dir / "secrets.env")
        return authorization_block([mesh_user(n, passwords[n]) for n in (*SERVICE_NAMES, GATEWAY)])

    def _command(self, *args: str) -> list[str]:
        return [*_pdeathsig_prefix(), sys.executable, "-m", "tipsmesh.cli", *args]

    async def _migrate(self) -> None:
        log_path = self.log_dir / "migrate.log"
        with log_path.open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                *self._command("migrate"),
                cwd=ROOT,
                env=self.child_env(None),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            async with asyncio.timeout(self.options.start_timeout):
                code = await proc.wait()
        except (TimeoutError, asyncio.CancelledError):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise
        if code != 0:
            raise UpError(
                f"migrate failed (exit {code})\n--- tail of {log_path} ---\n{log_tail(log_path)}"
            )

    async def _spawn(self, name: str) -> None:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            # Own session: a terminal's Ctrl-C reaches only `tips up`, which
            # then stops the children in order.
            proc = await asyncio.create_subprocess_exec(
                *self._command("serve", name),
                cwd=ROOT,
                env=self.child_env(name),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        self.children[name] = Child(name, self.ports[name], log_path, proc)

    async def _wait_serving(self) -> None:
        deadline = time.monotonic() + self.options.start_timeout
        await asyncio.gather(*(self._wait_one(c, deadline) for c in self.children.values()))

    async def _wait_one(self, child: Child, deadline: float) -> None:
        while True:
            if child.exited():
                raise child.failure(f"exited with code {child.proc.returncode} before SERVING")
            if child.name == GATEWAY:
                # Ready, not merely up: every upstream SERVING, revocations caught up.
                ok = await http_ok(f"{child.url}/readyz", deadline_s=1.0)
            else:
                ok = await grpc_serving(
                    f"{HOST}:{child.port}",
                    deadline_s=0.5,
                    tls=self._probe_tls,
                    server_name=child.name,
                )
            if ok:
                return
            if time.monotonic() > deadline:
                raise child.failure(
                    f"not SERVING within {self.options.start_timeout:g}s (port {child.port})"
                )
            await asyncio.sleep(0.1)

    # ----- running

    async def watch(self, stop: asyncio.Event) -> int:
        """Keep every child running until ``stop`` is set; then 0.

        A child that exits on its own is reported (with its log's tail) and
        started again after a backoff (0.5 s doubling to 30 s, back to 0.5 s
        once it ran a minute), while the others keep serving. Only ``stop``
        (SIGINT/SIGTERM) ends the mesh. ``mesh.json`` counts the restarts.
        """
        supervisors = [
            asyncio.ensure_future(self._supervise(name, stop)) for name in list(self.children)
        ]
        try:
            await stop.wait()
        finally:
            for task in supervisors:
                task.cancel()
            await asyncio.gather(*supervisors, return_exceptions=True)
        return 0

    async def _supervise(self, name: str, stop: asyncio.Event) -> None:
        backoff = RESTART_FIRST_S
        while True:
            child = self.children[name]
            started = time.monotonic()
            code = await child.proc.wait()
            if stop.is_set():
                return
            if time.monotonic() - started >= RESTART_RESET_S:
                backoff = RESTART_FIRST_S  # it ran fine for a while: a new failure
            self.restarts[name] = self.restarts.get(name, 0) + 1
            print(
                f"tips up: {child.failure(f'exited unexpectedly with code {code}')}\n"
                f"tips up: restarting {name} in {backoff:g} s "
                f"(restart {self.restarts[name]}); the others keep serving",
                file=sys.stderr,
                flush=True,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await stop.wait()
            if stop.is_set():
                return
            backoff = min(backoff * 2, RESTART_MAX_S)
            # Shielded: a stop arriving now must find the new child registered.
            await asyncio.shield(self._spawn(name))
            self._write_state()
            began = time.monotonic()
            try:
                await self._wait_one(self.children[name], began + self.options.start_timeout)
            except UpError as exc:
                print(f"tips up: {exc}", file=sys.stderr, flush=True)
                # Stuck short of SERVING: kill it; the loop sees it exit and retries.
                _signal_group(self.children[name].proc.pid, signal.SIGKILL)
                continue
            print(
                f"tips up: {name} SERVING again after {time.monotonic() - began:.2f} s",
                file=sys.stderr,
                flush=True,
            )

    def table(self) -> str:
        rows = [("process", "port", "address", "log")]
        for child in self.children.values():
            rows.append((child.name, str(child.port), child.url, str(child.log_path)))
        pg = self.postgres
        rows.append(
            (
                "postgres",
                str(pg.port) if pg else "-",
                _hide_password(self.database_url) + ("" if pg else " (external)"),
                str(pg.log_path) if pg else "-",
            )
        )
        nats = self.nats
        rows.append(
            (
                "nats",
                str(nats.port) if nats else "-",
                self.nats_url + ("" if nats else " (external)"),
                str(nats.log_path) if nats else "-",
            )
        )
        for name, idp in self.dev_idps.items():
            rows.append((f"dev {name}", str(idp.port), idp.issuer, "(development sign-in)"))
        if self.dev_providers is not None:
            dev = self.dev_providers
            rows.append(
                (
                    "dev providers",
                    str(dev.port),
                    dev.base_url,
                    "(development Google Calendar and Fitbit, made-up data)",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[3]
            for row in rows
        ]
        table = "\n".join(line.rstrip() for line in lines)
        if self.demo is not None:
            table += f"\n\ndemo user {self.demo['user']}: `tips login --as demo` prints a token"
        return table

    def _write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "run_dir": str(self.run_dir),
            "ports": self.ports,
            "pids": {name: c.proc.pid for name, c in self.children.items()},
            "database_url": _hide_password(self.database_url),
            "nats_url": self.nats_url,
            "postgres_pid_file": str(self.postgres.pgdata / "postmaster.pid")
            if self.postgres
            else None,
            "serving_after_s": self.serving_after,
            "phases_s": self.phases,
            "restarts": self.restarts,
            "tls_dir": str(self.tls_dir),
            "dev_identity_providers": {n: idp.issuer for n, idp in self.dev_idps.items()},
            "dev_data_providers": self.dev_providers.base_url if self.dev_providers else None,
        }
        tmp = self.run_dir / "mesh.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.run_dir / "mesh.json")

    # ----- stop

    async def stop(self) -> None:
        """Stop everything started, edge first, servers last; never raises."""
        if GATEWAY in self.children:
            await self._stop_children([self.children[GATEWAY]])
        await self._stop_children([c for n, c in self.children.items() if n != GATEWAY])
        for idp in self.dev_idps.values():
            with contextlib.suppress(Exception):
                await idp.stop()
        if self.dev_providers is not None:
            with contextlib.suppress(Exception):
                await self.dev_providers.stop()
        if self.nats is not None:
            await _quietly("NATS", self.nats.stop)
        if self.postgres is not None:
            await _quietly("PostgreSQL", self.postgres.stop)
        with contextlib.suppress(OSError):
            (self.run_dir / "mesh.json").unlink()

    async def _stop_children(self, children: list[Child]) -> None:
        for child in children:
            _signal_group(child.proc.pid, signal.SIGTERM)
        waits = [asyncio.ensure_future(c.proc.wait()) for c in children]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=self.options.stop_timeout)
            for fut in pending:
                fut.cancel()
        for child in children:
            if not child.exited():
                print(
                    f"tips up: {child.name} did not stop within "
                    f"{self.options.stop_timeout:g}s: killing it",
                    file=sys.stderr,
                )
            # Also reaches anything the child started in its group.
            _signal_group(child.proc.pid, signal.SIGKILL)
            if not child.exited():
                await child.proc.wait()


# Every setting naming the Triton-layout model repository a service reads.
def _own_metrics_port(env: dict[str, str], name: str | None) -> None:
    """``TIPS_METRICS_PORT=N`` for the mesh: the gateway scrapes at N, each service
    at N + 1 + its place in SERVICE_NAMES (one port for all would stop all but one)."""
    base = env.get("TIPS_METRICS_PORT", "0").strip()
    if not base.isdigit() or int(base) == 0:
        return  # unset or off; an invalid value is the settings' error to name
    if name is None:
        env.pop("TIPS_METRICS_PORT")  # one-off jobs (migrate) serve no metrics
        return
    offset = 0 if name == GATEWAY else 1 + SERVICE_NAMES.index(name)
    env["TIPS_METRICS_PORT"] = str(int(base) + offset)


def seed_model_repository(target: Path) -> None:
    """A model repository to start from: the checkout's models/, or (an installed
    package carries none) version 1 exported from the policy's prior."""
    if (ROOT / "models").is_dir():
        shutil.copytree(ROOT / "models", target)
        return
    from policy import bandit, onnx_export  # numpy and onnx: only when seeding

    onnx_export.export(bandit.Policy(), target)


MODEL_REPOSITORY_SETTINGS = (
    "TIPS_RECOMMENDER_MODEL_REPOSITORY",
    "TIPS_ML_PIPELINES_MODEL_REPOSITORY",
)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _stop_stale_nats(store_dir: Path, wait: float = 10.0) -> None:
    """SIGTERM a nats-server left on ``store_dir`` by a `tips up` that was SIGKILLed."""
    wanted = ["-sd", str(store_dir)]
    stale = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if args and args[0].endswith("nats-server") and _contains(args, wanted):
            stale.append(int(entry.name))
    for pid in stale:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while stale and time.monotonic() < deadline:
        stale = [pid for pid in stale if _alive(pid)]
        time.sleep(0.05)


def _contains(args: list[str], seq: list[str]) -> bool:
    return any(args[i : i + len(seq)] == seq for i in range(len(args)))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _hide_password(url: str) -> str:
    from kernel.logging import redact_text

    return redact_text(url)


async def _quietly(what: str, stop: Callable[[], None]) -> None:
    try:
        await _finish_in_thread(stop)
    except Exception as exc:
        print(f"tips up: stopping {what} failed: {exc}", file=sys.stderr)


async def up(options: UpOptions) -> int:
    """Run the mesh until SIGINT/SIGTERM; the process exit code."""
    mesh = Mesh(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    try:
        starting = asyncio.ensure_future(mesh.start())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait([starting, stopper], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not starting.done():
            print("tips up: interrupted while starting; stopping", file=sys.stderr)
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, UpError):
                await starting
            return 0
        starting.result()  # raises UpError
        print(mesh.table())
        print(f"{READY_LINE} {mesh.serving_after:.2f} s  (Ctrl-C stops the mesh)", flush=True)
        code = await mesh.watch(stop)
        print("tips up: stopping", file=sys.stderr, flush=True)
    except UpError as exc:
        print(f"tips up: {exc}", file=sys.stderr)
        code = 1
    finally:
        await mesh.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if code == 0:
        print("tips up: stopped", file=sys.stderr, flush=True)
    return code

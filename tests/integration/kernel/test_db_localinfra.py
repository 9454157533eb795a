"""tipsmesh.localinfra: throwaway servers start, restart, stop cleanly, fail clearly."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import pytest

from tipsmesh.localinfra import LocalInfraError, LocalNats, LocalPostgres

pytestmark = pytest.mark.integration


@pytest.fixture
def scratch() -> Iterator[Path]:
    # Under /tmp: as root the PostgreSQL server runs as another user that must reach it.
    path = Path(tempfile.mkdtemp(prefix="tips-li-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    # A stopped postmaster is reparented to PID 1, which may leave it a zombie here.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


async def test_postgres_restart_keeps_data_and_stop_leaves_nothing(scratch: Path) -> None:
    with LocalPostgres(scratch / "pg", password="first") as server:
        url = server.url
        assert url.startswith("postgresql://postgres:first@127.0.0.1:") and url.endswith("/tips")
        conn = await asyncpg.connect(url)
        await conn.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
        await conn.close()
        pid = int((scratch / "pg" / "pgdata" / "postmaster.pid").read_text().split()[0])
    assert not _alive(pid)
    assert not (scratch / "pg" / "pgdata" / "postmaster.pid").exists()
    # Restarted with another password: the old one no longer logs in.
    with LocalPostgres(scratch / "pg", password="second") as again:
        conn = await asyncpg.connect(again.url)
        assert await conn.fetchval("SELECT v FROM kept") == 42
        await conn.close()
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(again.url.replace(":second@", ":first@"))


async def test_postgres_logins_need_a_password_and_only_loopback_listens(scratch: Path) -> None:
    with LocalPostgres(scratch / "pg") as server:
        assert server.port is not None
        base = f"postgresql://{{}}@127.0.0.1:{server.port}/tips"
        for who in ("postgres", "postgres:wrong"):
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(base.format(who))
        conn = await asyncpg.connect(server.url)
        try:
            assert await conn.fetchval("SHOW listen_addresses") == "127.0.0.1"
            assert await conn.fetchval("SHOW unix_socket_directories") == ""
            assert await conn.fetchval("SHOW password_encryption") == "scram-sha-256"
            await conn.execute("CREATE ROLE nopass LOGIN; CREATE ROLE withpass LOGIN PASSWORD 'p'")
            stored = await conn.fetchval(
                "SELECT rolpassword FROM pg_authid WHERE rolname='withpass'"
            )
            assert stored.startswith("SCRAM-SHA-256$")
        finally:
            await conn.close()
        # A role without a password cannot log in at all: there is no trust rule.
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(base.format("nopass"))
        (await asyncpg.connect(base.format("withpass:p"))).terminate()
        hba = (scratch / "pg" / "pgdata" / "pg_hba.conf").read_text()
        assert "trust" not in hba and "scram-sha-256" in hba


def test_a_trust_era_data_dir_is_converted(scratch: Path) -> None:
    with LocalPostgres(scratch / "pg", password="x"):
        pass
    # As an older version left it: trust everywhere, no password marker.
    (scratch / "pg" / "pgdata" / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")
    (scratch / "pg" / "superuser.sha256").unlink()
    with LocalPostgres(scratch / "pg", password="now-set") as server:
        assert server._psql("SELECT 1") == "1"
        hba = (scratch / "pg" / "pgdata" / "pg_hba.conf").read_text()
        assert "trust" not in hba


def test_postgres_busy_port_fails_with_the_log_tail(scratch: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = LocalPostgres(scratch / "pg", port=port, start_timeout=10)
        with pytest.raises(LocalInfraError, match=r"(?s)did not start.*tail of .*postgres.log"):
            server.start()


async def test_nats_has_jetstream_and_stops_on_sigterm(scratch: Path) -> None:
    server = LocalNats(scratch / "nats")
    url = server.start()
    nc = await nats.connect(url)
    info = await nc.jetstream().account_info()
    assert info.limits is not None
    await nc.close()
    proc = server._proc
    server.stop()
    assert proc is not None and proc.returncode is not None


def test_nats_busy_port_fails_with_the_log_tail(scratch: Path) -> None:
    with LocalNats(scratch / "a") as first:
        assert first.port is not None
        with pytest.raises(LocalInfraError, match=rf"port {first.port} is already in use"):
            LocalNats(scratch / "b", port=first.port).start()

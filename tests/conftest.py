"""Shared fixtures: real PostgreSQL and NATS, never mocks.

- ``TIPS_DATABASE_URL`` set: that server is used (admin URL); otherwise a
  throwaway ``LocalPostgres`` is started for the session (~1 s).
  Either way each session gets a FRESH database with a random name, dropped
  at the end. Against a server we did not start, service roles get a unique
  prefix (``db_role_prefix``) and are dropped at the end too.
- ``TIPS_NATS_URL`` set: that server is used; otherwise a ``LocalNats``
  (~40 ms). Tests name streams and subjects with ``bus_ns`` and register
  streams in ``cleanup_streams`` so a shared server is left as found.
- Services started in process by a test run in plaintext (``TIPS_INSECURE=1``,
  set below) and verify users' tokens against this session's test issuer
  (``TIPS_JWKS_URL``, tests/support/tokens.py: ``as_user(user)``). Mutual TLS
  is tested on its own (tests/integration/kernel/test_mesh_tls.py) and the
  e2e mesh (`tips up`, which drops the caller's TIPS_* variables) runs with
  certificates. ``TIPS_DEV_MODE=1`` lets the auth service use the local
  identity providers (tipsmesh.devidp).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from sqlalchemy.engine import make_url

from kernel.settings import Settings
from tests.support import tokens
from tips.options.v1 import options_pb2
from tipsmesh.localinfra import LocalNats, LocalPostgres

os.environ["TIPS_INSECURE"] = "1"
os.environ["TIPS_DEV_MODE"] = "1"  # local identity providers (tipsmesh.devidp)
os.environ["TIPS_JWKS_URL"] = tokens.issuer().jwks_url


def _plain_url(url: str, database: str | None = None) -> str:
    """A libpq-style URL (asyncpg.connect does not take ``+asyncpg``)."""
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


async def _admin_exec(server_url: str, *statements: str) -> None:
    conn = await asyncpg.connect(_plain_url(server_url), timeout=10)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """Admin URL of the server tests use (do not create objects in its own database)."""
    external = os.environ.get("TIPS_DATABASE_URL")
    if external:
        yield external
        return
    # Under /tmp, not pytest's 0700 tmp dir: the server runs as another user when root.
    data_dir = Path(tempfile.mkdtemp(prefix="tips-pg-"))
    server = LocalPostgres(data_dir)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def db_role_prefix() -> str:
    """``tips_`` on our own server; unique (and dropped at the end) on a shared one."""
    if os.environ.get("TIPS_DATABASE_URL"):
        return f"tips_t{secrets.token_hex(3)}_"
    return "tips_"


@pytest.fixture(scope="session")
async def create_database(
    postgres_server_url: str, db_role_prefix: str
) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """Factory: a new empty database on the test server, dropped at session end."""
    created: list[str] = []

    async def create() -> str:
        name = f"tips_test_{secrets.token_hex(4)}"
        await _admin_exec(postgres_server_url, f'CREATE DATABASE "{name}"')
        created.append(name)
        return _plain_url(postgres_server_url, name)

    yield create
    await _admin_exec(
        postgres_server_url, *(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)' for n in created)
    )
    if os.environ.get("TIPS_DATABASE_URL"):
        conn = await asyncpg.connect(_plain_url(postgres_server_url), timeout=10)
        try:
            roles = await conn.fetch(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", db_role_prefix
            )
            for row in roles:
                await conn.execute(f'DROP ROLE IF EXISTS "{row["rolname"]}"')
        finally:
            await conn.close()


@pytest.fixture(scope="session")
async def database_url(create_database: Callable[[], Awaitable[str]]) -> str:
    """Admin URL of this session's fresh database (``postgresql://...``)."""
    return await create_database()


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """URL of a NATS server with JetStream."""
    external = os.environ.get("TIPS_NATS_URL")
    if external:
        yield external
        return
    store = Path(tempfile.mkdtemp(prefix="tips-nats-"))
    server = LocalNats(store)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(store, ignore_errors=True)


@pytest.fixture(scope="session")
def db_role_password() -> str:
    """The session's service roles log in with it (no login without a password)."""
    return secrets.token_urlsafe(18)


@pytest.fixture(scope="session")
def settings(
    database_url: str, nats_url: str, db_role_prefix: str, db_role_password: str
) -> Settings:
    """Settings pointing at the session's database and NATS."""
    return Settings(
        database_url=database_url,
        nats_url=nats_url,
        db_role_prefix=db_role_prefix,
        db_role_password=db_role_password,
    )


@pytest.fixture
def bus_ns() -> str:
    """A token unique to this test: put it in stream names and subjects."""
    return secrets.token_hex(4)


@pytest.fixture
async def cleanup_streams(nats_url: str) -> AsyncIterator[list[str]]:
    """Append stream names a test creates; they are deleted after the test."""
    names: list[str] = []
    yield names
    if not names:
        return
    nc = await nats.connect(nats_url, max_reconnect_attempts=1, connect_timeout=2)
    try:
        js = nc.jetstream()
        for name in names:
            with contextlib.suppress(Exception):
                await js.delete_stream(name)
    finally:
        await nc.close()


def _build_test_events() -> dict[str, Any]:
    """Proto messages for kernel tests, built at run time (no .proto in the contract)."""
    pool = descriptor_pool.Default()
    name = "tipstest/kernel/v1/events.proto"
    with contextlib.suppress(KeyError):
        pool.FindFileByName(name)
        return _lookup(pool)
    fdp = descriptor_pb2.FileDescriptorProto(
        name=name, package="tipstest.kernel.v1", syntax="proto3"
    )
    fdp.dependency.append("tips/options/v1/options.proto")
    string, int64 = (
        descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    )
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    for msg_name, subject in (
        ("ThingHappened", "tipstest.kernel.v1.thing_happened"),
        ("OtherThing", "tipstest.kernel.v1.other_thing"),
        ("NotAnEvent", ""),
    ):
        msg = fdp.message_type.add(name=msg_name)
        msg.field.add(name="event_id", number=1, type=string, label=optional)
        msg.field.add(name="count", number=2, type=int64, label=optional)
        if subject:
            event = msg.options.Extensions[options_pb2.event]
            event.subject = subject
            event.stream = "TIPSTEST_KERNEL"
    pool.Add(fdp)
    return _lookup(pool)


def _lookup(pool: descriptor_pool.DescriptorPool) -> dict[str, Any]:
    return {
        n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tipstest.kernel.v1.{n}"))
        for n in ("ThingHappened", "OtherThing", "NotAnEvent")
    }


@pytest.fixture(scope="session")
def test_events() -> dict[str, Any]:
    """Message classes: ``ThingHappened``/``OtherThing`` (events on stream
    TIPSTEST_KERNEL) and ``NotAnEvent`` (no event option)."""
    return _build_test_events()

"""kernel.db: per-service URLs, sessions, retry, clear errors."""

from __future__ import annotations

import secrets

import pytest
from sqlalchemy import text

from kernel.db import Database, DatabaseError, service_role, service_url
from kernel.migrations import migrate
from kernel.service import ServiceDefinition
from kernel.settings import Settings

pytestmark = pytest.mark.integration


def test_service_url_replaces_user_and_driver() -> None:
    settings = Settings(
        database_url="postgresql://postgres:admin-secret@db.internal:5433/tips",
        db_role_password="s3cret",
    )
    assert service_url(settings, "profile") == (
        "postgresql+asyncpg://tips_profile:s3cret@db.internal:5433/tips"
    )
    no_password = Settings(database_url="postgres://postgres@127.0.0.1/tips")
    assert service_url(no_password, "auth") == "postgresql+asyncpg://tips_auth@127.0.0.1/tips"


def test_service_database_url_wins() -> None:
    settings = Settings(service_database_url="postgresql://me:pw@h/other")
    assert service_url(settings, "auth") == "postgresql+asyncpg://me:pw@h/other"


def test_bad_service_name_is_rejected() -> None:
    with pytest.raises(DatabaseError, match="invalid service name 'auth; drop'"):
        service_role(Settings(), "auth; drop")


async def _no_build(runtime: object) -> list[object]:
    return []


async def test_connect_session_ping_close(settings: Settings) -> None:
    # A name of our own: the session database may hold the real services' schemas.
    service = f"dbt{secrets.token_hex(3)}"
    # uses_db without migrations_dir: role and schema only.
    await migrate(settings, [ServiceDefinition(name=service, build=_no_build)])  # type: ignore[arg-type]
    db = await Database.connect(settings, service)
    try:
        await db.ping()
        async with db.transaction() as session:
            await session.execute(text("CREATE TABLE IF NOT EXISTS kv (k text PRIMARY KEY)"))
            await session.execute(text("INSERT INTO kv VALUES ('a') ON CONFLICT DO NOTHING"))
        async with db.session() as session:
            user, schema, rows = (
                await session.execute(
                    text(
                        "SELECT current_user, current_schema(), "
                        f"(SELECT count(*) FROM {service}.kv)"
                    )
                )
            ).one()
        assert (user, schema, rows) == (service_role(settings, service), service, 1)
    finally:
        await db.close()


async def test_connect_gives_up_with_a_clear_error(settings: Settings) -> None:
    bad = settings.model_copy(
        update={
            "database_url": "postgresql://postgres:admin-pw@127.0.0.1:1/tips",
            "db_role_password": "hunter2",
        }
    )
    with pytest.raises(DatabaseError) as info:
        await Database.connect(bad, "events", attempts=2, delay=0.01)
    message = str(info.value)
    assert "cannot connect service 'events'" in message
    assert "127.0.0.1:1" in message and "after 2 attempts" in message
    assert "hunter2" not in message and "admin-pw" not in message

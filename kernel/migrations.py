"""Schema migrations: one Alembic history per service, one schema and role each.

``migrate`` does, as the admin URL (``settings.database_url``):

1. takes an advisory lock, so concurrent ``tips migrate`` runs serialize;
2. locks the database down: no ``CREATE`` on schema ``public`` and no
   ``CONNECT``/``TEMP`` for ``PUBLIC``, so a role can use only what it is granted;
3. per service: creates role ``tips_<svc>`` (LOGIN, password if set) if
   missing, grants it ``CONNECT``, and creates schema ``<svc>`` owned by it;
4. runs ``alembic upgrade head`` for each service with a ``migrations_dir``,
   connected as the service's role (so the role owns its tables) with the
   version table ``<svc>.alembic_version``.

Everything is idempotent: re-running is a no-op. Alembic is synchronous, so
step 4 runs in a worker thread (``kernel/migrations_env/env.py`` drives
asyncpg there with its own event loop) and never blocks the caller's loop.

A service's scripts live in ``services/<name>/migrations/versions/``; create
one with ``alembic_config(...)`` and ``alembic.command.revision``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from kernel.db import (
    admin_url,
    check_identifier,
    redact,
    role_password,
    service_role,
    service_url,
)
from kernel.service import ServiceDefinition
from kernel.settings import Settings

__all__ = ["ENV_DIR", "MigrationError", "alembic_config", "migrate", "migrate_sync"]

log = logging.getLogger(__name__)

ENV_DIR = Path(__file__).parent / "migrations_env"
# Arbitrary constant: the advisory lock all `migrate` runs take.
_LOCK_KEY = 0x7469_7073  # "tips"


class MigrationError(RuntimeError):
    """A migration could not be applied."""


def _versions_dir(definition: ServiceDefinition) -> Path:
    assert definition.migrations_dir is not None
    return Path(definition.migrations_dir) / "versions"


def alembic_config(
    settings: Settings,
    definition: ServiceDefinition,
    *,
    target_metadata: Any = None,
) -> Config:
    """The Alembic config of one service (shared env, the service's versions dir)."""
    if definition.migrations_dir is None:
        raise MigrationError(f"service {definition.name!r} has no migrations_dir")
    cfg = Config()
    cfg.set_main_option("script_location", str(ENV_DIR))
    cfg.set_main_option("version_locations", str(_versions_dir(definition)))
    # '%' is ConfigParser interpolation: keep the path literal.
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["schema"] = definition.name
    # Always the role derived from the admin URL: service_database_url names one
    # service's URL and must not make every service migrate as that user.
    role_settings = settings.model_copy(update={"service_database_url": None})
    cfg.attributes["url"] = service_url(role_settings, definition.name)
    cfg.attributes["target_metadata"] = target_metadata
    return cfg


def _sql_literal(value: str) -> str:
    # DDL takes no bind parameters; standard_conforming_strings is on since 9.1.
    return "'" + value.replace("'", "''") + "'"


async def _prepare(conn: AsyncConnection, settings: Settings, services: Sequence[str]) -> None:
    database = (await conn.execute(text("SELECT current_database()"))).scalar_one()
    db_ident = '"' + str(database).replace('"', '""') + '"'
    # Least privilege: roles get exactly what is granted below, nothing via PUBLIC.
    await conn.execute(text("REVOKE ALL ON SCHEMA public FROM PUBLIC"))
    await conn.execute(text(f"REVOKE ALL ON DATABASE {db_ident} FROM PUBLIC"))
    for service in services:
        role = service_role(settings, service)
        password = role_password(settings, service)
        exists = (
            await conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role})
        ).scalar()
        login = f"LOGIN PASSWORD {_sql_literal(password)}" if password else "LOGIN"
        # ALTER on re-run keeps the password in step with the settings.
        verb = "ALTER" if exists else "CREATE"
        await conn.execute(text(f"{verb} ROLE {role} {login}"))
        await conn.execute(text(f"GRANT CONNECT ON DATABASE {db_ident} TO {role}"))
        await conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {service} AUTHORIZATION {role}"))
        # A schema made earlier by someone else still ends up owned by the role.
        await conn.execute(text(f"ALTER SCHEMA {service} OWNER TO {role}"))
        log.info("schema ready", extra={"service": service, "role": role})


def _upgrade(settings: Settings, definition: ServiceDefinition) -> None:
    command.upgrade(alembic_config(settings, definition), "head")


async def migrate(settings: Settings, definitions: Sequence[ServiceDefinition]) -> None:
    """Create roles and schemas, then upgrade each service to its head revision."""
    services = [check_identifier(d.name) for d in definitions if d.uses_db]
    url = admin_url(settings)
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            # Held for the whole run: two concurrent migrates would race on CREATE ROLE.
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _LOCK_KEY})
            try:
                await _prepare(conn, settings, services)
                for definition in definitions:
                    if definition.migrations_dir is None or not definition.uses_db:
                        continue
                    if not _versions_dir(definition).is_dir():
                        raise MigrationError(
                            f"service {definition.name!r}: no versions dir at "
                            f"{_versions_dir(definition)}"
                        )
                    try:
                        await asyncio.to_thread(_upgrade, settings, definition)
                    except Exception as exc:
                        raise MigrationError(
                            f"migrating service {definition.name!r} failed: {exc}"
                        ) from exc
                    log.info("migrated", extra={"service": definition.name})
            finally:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
    except MigrationError:
        raise
    except Exception as exc:
        raise MigrationError(f"migrate against {redact(url)} failed: {exc}") from exc
    finally:
        await engine.dispose()


def migrate_sync(settings: Settings, definitions: Sequence[ServiceDefinition]) -> None:
    """``migrate`` for the CLI (no event loop running)."""
    asyncio.run(migrate(settings, definitions))

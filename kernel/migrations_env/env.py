"""Alembic environment shared by every service (see ``kernel.migrations``).

``kernel.migrations`` passes, in ``config.attributes``: ``schema`` (the
service's schema), ``url`` (the service ROLE's asyncpg URL, so the role owns
what migrations create) and optionally ``target_metadata`` (autogenerate).
It runs in a worker thread, so ``asyncio.run`` here blocks no event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

config = context.config
schema: str = config.attributes["schema"]
url: str = config.attributes["url"]
target_metadata: Any = config.attributes.get("target_metadata")


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        # Each service keeps its own history in its own schema.
        version_table="alembic_version",
        version_table_schema=schema,
        include_schemas=False,
        **kwargs,
    )


def run_offline() -> None:
    _configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_sync(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_online() -> None:
    engine = create_async_engine(
        url,
        poolclass=pool.NullPool,
        # Unqualified names in migrations land in the service's schema.
        connect_args={"server_settings": {"search_path": schema}},
    )
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    asyncio.run(run_online())

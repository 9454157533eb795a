"""kernel.erasure.ErasureConsumer against real PostgreSQL: one transaction, idempotent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import Column, MetaData, Table, Text, delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.bus import Delivery
from kernel.db import Database
from kernel.erasure import ERASED, ErasureConsumer, guard_user
from kernel.migrations import migrate
from kernel.outbox import processed_table
from kernel.service import ServiceDefinition
from kernel.settings import Settings
from tips.profile.v1 import events_pb2

pytestmark = pytest.mark.integration


async def _no_build(runtime: object) -> list[object]:
    return []


@pytest.fixture
async def schema(settings: Settings, bus_ns: str) -> AsyncIterator[tuple[Database, Table, Table]]:
    service = f"era{bus_ns}"
    await migrate(settings, [ServiceDefinition(name=service, build=_no_build)])  # type: ignore[arg-type]
    db = await Database.connect(settings, service)
    metadata = MetaData(schema=service)
    items = Table("items", metadata, Column("user_id", Text), Column("what", Text))
    processed = processed_table(metadata)
    async with db.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield db, items, processed
    await db.close()


def _delivery(user: str, msg_id: str) -> Delivery[events_pb2.UserDeleted]:
    message = events_pb2.UserDeleted(
        event_id="e1", user=f"users/{user}", erasure=f"users/{user}/erasure"
    )
    return Delivery(message, msg_id, "tips.profile.v1.user_deleted", {}, 1, "TIPS_PROFILE", 1, None)  # type: ignore[arg-type]


async def _count(db: Database, items: Table, user: str) -> int:
    async with db.session() as session:
        found = await session.execute(
            select(func.count()).select_from(items).where(items.c.user_id == user)
        )
        return int(found.scalar() or 0)


async def test_purges_once_and_rolls_back_with_a_failure(
    schema: tuple[Database, Table, Table],
) -> None:
    db, items, processed = schema
    async with db.transaction() as session:
        await session.execute(
            insert(items),
            [{"user_id": u, "what": w} for u in ("u_gone", "u_stays") for w in ("a", "b")],
        )
    failures: list[Any] = []
    forgotten: list[str] = []

    async def purge(session: AsyncSession, user_id: str) -> int:
        result = await session.execute(delete(items).where(items.c.user_id == user_id))
        if not failures:
            failures.append(user_id)
            raise RuntimeError("database hiccup")  # the claim must roll back too
        return int(getattr(result, "rowcount", 0) or 0)

    consumer = ErasureConsumer(db, processed, "t-erasure", purge, forgotten.append)
    with pytest.raises(RuntimeError):
        await consumer.handle(_delivery("u_gone", "users/u_gone/erasure"))
    assert await _count(db, items, "u_gone") == 2 and not forgotten

    # Redelivered after the failure: done, and the read model hook runs after the commit.
    await consumer.handle(_delivery("u_gone", "users/u_gone/erasure"))
    assert await _count(db, items, "u_gone") == 0
    assert await _count(db, items, "u_stays") == 2
    assert forgotten == ["u_gone"]

    # A second redelivery is claimed already: the purge does not even run.
    async with db.transaction() as session:
        await session.execute(insert(items).values(user_id="u_gone", what="late"))
    await consumer.handle(_delivery("u_gone", "users/u_gone/erasure"))
    assert await _count(db, items, "u_gone") == 1 and forgotten == ["u_gone"]


async def test_a_malformed_event_is_skipped(schema: tuple[Database, Table, Table]) -> None:
    db, _, processed = schema
    called: list[str] = []

    async def purge(session: AsyncSession, user_id: str) -> int:
        called.append(user_id)
        return 0

    consumer = ErasureConsumer(db, processed, "t-erasure", purge)
    await consumer.handle(_delivery("", "m1"))  # "users/" names no user: acked, nothing runs
    assert called == []


async def test_a_late_event_cannot_bring_an_erased_users_rows_back(
    schema: tuple[Database, Table, Table],
) -> None:
    db, items, processed = schema

    async def purge(session: AsyncSession, user_id: str) -> int:
        result = await session.execute(delete(items).where(items.c.user_id == user_id))
        return int(getattr(result, "rowcount", 0) or 0)

    async def late_write(user_id: str) -> bool:
        """What a consumer of another event does: guard, then write the user's row."""
        async with db.transaction() as session:
            if await guard_user(session, processed, user_id):
                return False
            await session.execute(insert(items).values(user_id=user_id, what="late"))
        return True

    assert await late_write("u_alive")  # not erased: written
    await ErasureConsumer(db, processed, "t-erasure", purge).handle(
        _delivery("u_late", "users/u_late/erasure")
    )
    assert not await late_write("u_late")
    assert await _count(db, items, "u_late") == 0
    async with db.session() as session:
        stored = await session.execute(
            select(processed.c.msg_id).where(processed.c.consumer == ERASED)
        )
        tombstones = list(stored.scalars())
        assert len(tombstones) == 1 and "u_late" not in tombstones[0]  # hashed, not in clear

    # Racing: the erasure waits for a writer holding the user's lock, then deletes its row.
    async with db.transaction() as session:
        assert not await guard_user(session, processed, "u_race")
        await session.execute(insert(items).values(user_id="u_race", what="in flight"))
        erasing = asyncio.create_task(
            ErasureConsumer(db, processed, "t-erasure", purge).handle(
                _delivery("u_race", "users/u_race/erasure")
            )
        )
        await asyncio.sleep(0.2)  # the erasure is blocked on the lock meanwhile
        assert not erasing.done()
    async with asyncio.timeout(30):
        await erasing
    assert await _count(db, items, "u_race") == 0

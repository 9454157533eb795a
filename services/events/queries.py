"""Replay scans, purges and user erasure on the events schema."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from kernel.ids import random_id
from kernel.names import user_name
from kernel.outbox import enqueue
from kernel.timestamps import timestamp
from services.events.selectors import PurgeSelector, ScanQuery
from services.events.store import consents, outbox, signals
from tips.events.v1 import events_pb2, signal_pb2


async def scan_chunk(
    session: AsyncSession, query: ScanQuery
) -> tuple[list[signal_pb2.Signal], tuple[datetime, str] | None]:
    """The next chunk in (time, id) order and the position of its last row."""
    at = signals.c[query.time_field]
    stmt = select(signals.c.id, at.label("at"), signals.c.payload).where(
        at >= query.start, at < query.until
    )
    if query.users:
        stmt = stmt.where(signals.c.user_id.in_(query.users))
    if query.kinds:
        stmt = stmt.where(signals.c.kind.in_(query.kinds))
    if query.sources:
        stmt = stmt.where(signals.c.source.in_(query.sources))
    if query.after is not None:
        stmt = stmt.where(tuple_(at, signals.c.id) > query.after)
    rows = (await session.execute(stmt.order_by(at, signals.c.id).limit(query.chunk))).all()
    if not rows:
        return [], None
    return [signal_pb2.Signal.FromString(r.payload) for r in rows], (rows[-1].at, rows[-1].id)


def _purge_where(selector: PurgeSelector) -> list[ColumnElement[Any]]:
    where: list[ColumnElement[Any]] = [signals.c.user_id == selector.user_id]
    if selector.source:
        where.append(signals.c.source == selector.source)
    if selector.connection:
        where.append(signals.c.connection == selector.connection)
    if selector.kinds:
        where.append(signals.c.kind.in_(selector.kinds))
    if selector.start is not None:
        where.append(signals.c.start_time >= selector.start)
    if selector.end is not None:
        where.append(signals.c.start_time < selector.end)
    return where


async def count_purge(session: AsyncSession, selector: PurgeSelector) -> int:
    stmt = select(func.count()).select_from(signals).where(*_purge_where(selector))
    return int((await session.execute(stmt)).scalar_one())


async def purge(session: AsyncSession, selector: PurgeSelector, now: datetime) -> int:
    """Delete the matching signals and their outbox rows; enqueue one SignalsPurged."""
    deleted = (
        await session.execute(
            delete(signals).where(*_purge_where(selector)).returning(signals.c.id)
        )
    ).all()
    names = [f"users/{selector.user_id}/signals/{r.id}" for r in deleted]
    if names:
        # Published or not: nothing of a purged signal stays in this schema.
        await session.execute(delete(outbox).where(outbox.c.msg_id.in_(names)))
    await enqueue_purged(session, selector, len(names), now)
    return len(names)


async def enqueue_purged(
    session: AsyncSession, selector: PurgeSelector, count: int, now: datetime
) -> None:
    """The SignalsPurged event of a purge, in the caller's transaction."""
    event = events_pb2.SignalsPurged(
        event_id=f"users/{selector.user_id}/purges/{random_id()}",
        user=user_name(selector.user_id),
        source=selector.source,  # type: ignore[arg-type]
        connection=selector.connection,
        kinds=selector.kinds,  # type: ignore[arg-type]
        all_signals=selector.all_signals,
        reason=selector.reason,  # type: ignore[arg-type]
        purge_count=count,
    )
    event.occur_time.CopyFrom(timestamp(now))
    if selector.start is not None:
        event.time_range.start_time.CopyFrom(timestamp(selector.start))
    if selector.end is not None:
        event.time_range.end_time.CopyFrom(timestamp(selector.end))
    await enqueue(session, outbox, event, msg_id=event.event_id)


async def erase_user(session: AsyncSession, user_id: str) -> int:
    """Delete every signal of the user, every outbox row about them, their consents.

    Unpublished SignalRecorded rows go too: after the erasure nothing of the
    user may reach the stream. Their msg ids all start with ``users/{user}/``.
    """
    deleted = (
        await session.execute(
            delete(signals).where(signals.c.user_id == user_id).returning(signals.c.id)
        )
    ).all()
    prefix = f"users/{user_id}/"
    await session.execute(delete(outbox).where(func.starts_with(outbox.c.msg_id, prefix)))
    await session.execute(delete(consents).where(consents.c.user_id == user_id))
    return len(deleted)


def utcnow() -> datetime:
    return datetime.now(UTC)

"""The events service's tables (schema ``events``) and queries.

``signals`` keeps each accepted signal once per (user, source,
client_signal_id); ``payload`` is the serialized stored ``Signal`` (name and
ingest time included), so reads return exactly what was published. The
outbox carries ``SignalRecorded`` events to JetStream in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.outbox import enqueue, outbox_table
from services.events.domain import ListQuery, user_name
from tips.events.v1 import events_pb2, signal_pb2

SCHEMA = "events"
metadata = MetaData(schema=SCHEMA)

signals = Table(
    "signals",
    metadata,
    Column("id", Text, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("client_signal_id", Text, nullable=False),
    Column("kind", Integer, nullable=False),
    Column("source", Integer, nullable=False),
    Column("connection", Text, nullable=False, server_default=""),
    Column("start_time", DateTime(timezone=True), nullable=False),
    Column("end_time", DateTime(timezone=True), nullable=True),
    Column("ingest_time", DateTime(timezone=True), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    UniqueConstraint("user_id", "source", "client_signal_id", name="uq_signals_client_id"),
    Index("ix_signals_user_start", "user_id", "start_time"),
    Index("ix_signals_user_ingest", "user_id", "ingest_time"),
)

outbox = outbox_table(metadata)


@dataclass(frozen=True)
class Ingested:
    """The outcome of storing one item: its signal id and whether it is new."""

    signal_id: str
    created: bool


async def insert_signal(
    session: AsyncSession, user_id: str, stored: signal_pb2.Signal, signal_id: str
) -> Ingested:
    """Store ``stored`` and enqueue its SignalRecorded, or find the earlier copy.

    A duplicate (same user, source, client_signal_id) stores and enqueues
    nothing and returns the existing id.
    """
    ingest_time = stored.ingest_time.ToDatetime(UTC)
    result = await session.execute(
        insert(signals)
        .values(
            id=signal_id,
            user_id=user_id,
            client_signal_id=stored.client_signal_id,
            kind=int(stored.kind),
            source=int(stored.source),
            connection=stored.connection,
            start_time=stored.start_time.ToDatetime(UTC),
            end_time=(stored.end_time.ToDatetime(UTC) if stored.HasField("end_time") else None),
            ingest_time=ingest_time,
            payload=stored.SerializeToString(),
        )
        .on_conflict_do_nothing(constraint="uq_signals_client_id")
        .returning(signals.c.id)
    )
    if result.scalar() is None:
        existing = await session.execute(
            select(signals.c.id).where(
                signals.c.user_id == user_id,
                signals.c.source == int(stored.source),
                signals.c.client_signal_id == stored.client_signal_id,
            )
        )
        return Ingested(existing.scalar_one(), created=False)
    event = events_pb2.SignalRecorded(event_id=stored.name, user=user_name(user_id), signal=stored)
    event.occur_time.CopyFrom(stored.ingest_time)
    # The signal's name is unique: as msg_id it makes publishing idempotent.
    await enqueue(session, outbox, event, msg_id=stored.name)
    return Ingested(signal_id, created=True)


async def get_signal(
    session: AsyncSession, user_id: str, signal_id: str
) -> signal_pb2.Signal | None:
    row = (
        await session.execute(
            select(signals.c.payload).where(signals.c.user_id == user_id, signals.c.id == signal_id)
        )
    ).scalar()
    return None if row is None else signal_pb2.Signal.FromString(row)


async def list_signals(
    session: AsyncSession, query: ListQuery
) -> tuple[list[signal_pb2.Signal], tuple[datetime, str] | None]:
    """One page and the cursor of its last row (None on the last page)."""
    order_col = signals.c[query.order_field]
    range_col = signals.c[query.time_field]
    stmt = select(signals.c.id, order_col.label("at"), signals.c.payload).where(
        signals.c.user_id == query.user_id
    )
    if query.kinds:
        stmt = stmt.where(signals.c.kind.in_(query.kinds))
    if query.source:
        stmt = stmt.where(signals.c.source == query.source)
    if query.connection:
        stmt = stmt.where(signals.c.connection == query.connection)
    if query.range_start is not None:
        stmt = stmt.where(range_col >= query.range_start)
    if query.range_end is not None:
        stmt = stmt.where(range_col < query.range_end)
    key = tuple_(order_col, signals.c.id)
    if query.after is not None:
        stmt = stmt.where(key < query.after if query.descending else key > query.after)
    if query.descending:
        stmt = stmt.order_by(order_col.desc(), signals.c.id.desc())
    else:
        stmt = stmt.order_by(order_col.asc(), signals.c.id.asc())
    rows = (await session.execute(stmt.limit(query.page_size + 1))).all()
    page = rows[: query.page_size]
    out = [signal_pb2.Signal.FromString(r.payload) for r in page]
    cursor = (page[-1].at, page[-1].id) if len(rows) > query.page_size else None
    return out, cursor

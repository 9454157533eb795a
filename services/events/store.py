"""The events service's tables (schema ``events``) and queries.

``signals`` keeps each accepted signal once per (user, source,
client_signal_id); ``payload`` is the serialized stored ``Signal`` (name and
ingest time included), so reads return exactly what was published. The
outbox carries ``SignalRecorded`` events to JetStream in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    func,
    select,
    text,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.names import user_name
from kernel.outbox import EventRows, enqueue_rows, outbox_table, processed_table
from services.events.domain import ListQuery
from services.events.recorded import recorded_bytes
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
    # ReplayAllSignals scans every user in time order.
    Index("ix_signals_start_id", "start_time", "id"),
    Index("ix_signals_ingest_id", "ingest_time", "id"),
)

# The consent read model: each user's decision per purpose, from ConsentChanged
# (services/events/consent.py). ``update_time`` orders out-of-order deliveries.
consents = Table(
    "consents",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("purpose", Integer, primary_key=True),
    Column("granted", Boolean, nullable=False),
    Column("update_time", DateTime(timezone=True), nullable=False),
)

outbox = outbox_table(metadata)
processed = processed_table(metadata)


class Ingested(NamedTuple):
    """The outcome of storing one item: its signal id and whether it is new.

    A NamedTuple: one is built per item, and it is several times cheaper to
    build than a frozen dataclass.
    """

    signal_id: str
    created: bool


@dataclass(frozen=True)
class NewSignal:
    """An item to store: the signal as stored (named, ingest time set)."""

    user_id: str
    signal_id: str
    stored: signal_pb2.Signal


# One statement per table for a whole batch: arrays in, unnest on the server.
_INSERT_SIGNALS = text(
    """
    INSERT INTO events.signals (id, user_id, client_signal_id, kind, source, connection,
                                start_time, end_time, ingest_time, payload)
    SELECT id, user_id, client_signal_id, kind, source, connection,
           to_timestamp(0) + s * interval '1 microsecond',
           to_timestamp(0) + e * interval '1 microsecond',
           to_timestamp(0) + i * interval '1 microsecond', payload
    FROM unnest(CAST(:ids AS text[]), CAST(:users AS text[]),
                         CAST(:client_ids AS text[]), CAST(:kinds AS int[]),
                         CAST(:sources AS int[]), CAST(:connections AS text[]),
                         CAST(:starts AS bigint[]), CAST(:ends AS bigint[]),
                         CAST(:ingests AS bigint[]), CAST(:payloads AS bytea[]))
         AS n(id, user_id, client_signal_id, kind, source, connection, s, e, i, payload)
    ON CONFLICT ON CONSTRAINT uq_signals_client_id DO NOTHING
    RETURNING id
    """
)
_EXISTING = text(
    """
    SELECT s.id, s.user_id, s.source, s.client_signal_id FROM events.signals s
    JOIN unnest(CAST(:users AS text[]), CAST(:sources AS int[]),
                CAST(:client_ids AS text[])) AS k(user_id, source, client_signal_id)
      USING (user_id, source, client_signal_id)
    """
)


def _key(user_id: str, signal: signal_pb2.Signal) -> tuple[str, int, str]:
    return (user_id, int(signal.source), signal.client_signal_id)


async def insert_signals(session: AsyncSession, items: Sequence[NewSignal]) -> list[Ingested]:
    """Store every item and enqueue one SignalRecorded per new signal, in ~4 round trips.

    An item whose (user, source, client_signal_id) is already stored, or
    appears earlier in ``items``, stores and enqueues nothing and gets the
    existing id. The caller's transaction commits signals and events together.
    """
    keys = [_key(item.user_id, item.stored) for item in items]
    first: dict[tuple[str, int, str], int] = {}
    for n, key in enumerate(keys):
        first.setdefault(key, n)
    fresh = [(keys[n], items[n]) for n in first.values()]
    # Serialized once: the stored payload, and the signal inside the outbox event.
    payloads = [item.stored.SerializeToString() for _, item in fresh]
    created: set[str] = set()
    if fresh:
        rows = await session.execute(
            _INSERT_SIGNALS, _signal_columns([i for _, i in fresh], payloads)
        )
        created = {r[0] for r in rows}
    existing = {key: i.signal_id for key, i in fresh if i.signal_id in created}
    lost = [key for key, i in fresh if i.signal_id not in created]
    if lost:
        rows = await session.execute(
            _EXISTING,
            {
                "users": [k[0] for k in lost],
                "sources": [k[1] for k in lost],
                "client_ids": [k[2] for k in lost],
            },
        )
        for r in rows:
            existing[(r.user_id, r.source, r.client_signal_id)] = r.id
    new = [(i, p) for (_, i), p in zip(fresh, payloads, strict=True) if i.signal_id in created]
    if new:
        await _enqueue_recorded(session, new)
    return [
        Ingested(existing[key], created=existing[key] == item.signal_id)
        for key, item in zip(keys, items, strict=True)
    ]


def _signal_columns(items: Sequence[NewSignal], payloads: list[bytes]) -> dict[str, Any]:
    # Microseconds since the epoch: exact, and much cheaper than datetimes per row.
    def ts(value: Timestamp) -> int:
        return value.seconds * 1_000_000 + value.nanos // 1000

    return {
        "ids": [i.signal_id for i in items],
        "users": [i.user_id for i in items],
        "client_ids": [i.stored.client_signal_id for i in items],
        "kinds": [int(i.stored.kind) for i in items],
        "sources": [int(i.stored.source) for i in items],
        "connections": [i.stored.connection for i in items],
        "starts": [ts(i.stored.start_time) for i in items],
        "ends": [ts(i.stored.end_time) if i.stored.HasField("end_time") else None for i in items],
        "ingests": [ts(i.stored.ingest_time) for i in items],
        "payloads": payloads,
    }


async def _enqueue_recorded(session: AsyncSession, new: Sequence[tuple[NewSignal, bytes]]) -> None:
    """The SignalRecorded outbox rows of ``(item, its serialized signal)``, built without
    re-serializing; the signal's name is unique: as msg_id it makes publishing idempotent."""
    rows = EventRows(events_pb2.SignalRecorded)
    await enqueue_rows(
        session,
        outbox,
        [
            rows.row(
                item.stored.name,
                recorded_bytes(
                    item.stored.name,
                    user_name(item.user_id),
                    item.stored.ingest_time.SerializeToString(),
                    payload,
                ),
            )
            for item, payload in new
        ],
    )


async def pending_outbox(session: AsyncSession, cap: int) -> int:
    """Unpublished outbox rows, counted up to ``cap`` (bounded cost)."""
    sub = select(outbox.c.id).where(outbox.c.published_at.is_(None)).limit(cap).subquery()
    return int((await session.execute(select(func.count()).select_from(sub))).scalar_one())


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

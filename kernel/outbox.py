"""Transactional outbox (publish) and processed-messages table (consume).

Publishing from a request handler straight to NATS loses the event when NATS
is down after the commit, or publishes an event whose transaction then rolls
back. Instead the handler ``enqueue``s the event in ITS OWN transaction (the
row commits or rolls back with the data), and an ``OutboxRelay`` publishes
committed rows in id order with their ``msg_id`` as ``Nats-Msg-Id``:

- nothing lost: a row stays pending until JetStream acked it; outages are
  retried with backoff, forever;
- nothing twice: a row published but not yet marked (crash, lost ack) is
  published again with the same msg id, and JetStream drops the duplicate
  (2-minute window). Only one relay per table publishes at a time (advisory
  lock), so order holds with several replicas.

The relay wakes on ``LISTEN/NOTIFY`` (``enqueue`` notifies, delivered on
commit) and polls as a fallback. Published rows are marked, then pruned after
``retention`` seconds, so the table stays small.

Consumers get at-least-once delivery: ``claim`` records a message id in a
``processed_messages`` table in the handler's transaction, so a redelivered
message is recognised and skipped (the claim commits with the handler's writes).

Each service creates these tables in its own migration, e.g.
``outbox_table(MetaData(schema="profile")).create(op.get_bind())``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import zlib
from collections.abc import Sequence
from functools import cache
from typing import Any, NamedTuple

import orjson
from google.protobuf.message import Message
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    delete,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement, TextClause

from kernel.bus import (
    CONTENT_TYPE_HEADER,
    MSG_ID_HEADER,
    Bus,
    content_type_of,
    message_headers,
    raise_if_cancelled,
    subject_of,
)
from kernel.db import Database, HeldConnection, insert_from_arrays
from kernel.telemetry import inject_headers

__all__ = [
    "EventRows",
    "OutboxRelay",
    "OutboxRow",
    "claim",
    "enqueue",
    "enqueue_rows",
    "insert_rows_sql",
    "notify_channel",
    "outbox_row",
    "outbox_table",
    "processed_table",
    "prune_processed",
    "row_arrays",
]

log = logging.getLogger(__name__)


def outbox_table(metadata: MetaData, name: str = "outbox") -> Table:
    """The outbox table in ``metadata``'s schema (one per service)."""
    table = Table(
        name,
        metadata,
        Column("id", BigInteger, Identity(always=False), primary_key=True),
        Column("msg_id", Text, nullable=False, unique=True),
        Column("subject", Text, nullable=False),
        Column("message_type", Text, nullable=False),
        Column("payload", LargeBinary, nullable=False),
        Column("headers", JSONB, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("published_at", DateTime(timezone=True), nullable=True),
    )
    # The relay only ever scans pending rows: keep that index tiny.
    Index(f"ix_{name}_pending", table.c.id, postgresql_where=table.c.published_at.is_(None))
    return table


def notify_channel(table: Table) -> str:
    """The LISTEN/NOTIFY channel that wakes the relay of ``table``."""
    return f"tips_outbox_{table.schema or 'public'}_{table.name}"


class OutboxRow(NamedTuple):
    """One event as the outbox stores it; ``headers`` is JSON text (content type,
    ``Nats-Msg-Id``, trace context)."""

    msg_id: str
    subject: str
    message_type: str
    payload: bytes
    headers: str


class EventRows:
    """Outbox rows of one event type, for a batch built in one request.

    The headers differ per row only by ``Nats-Msg-Id``: the rest (content
    type, the caller's trace context, captured here) is encoded once.
    ``payload`` may be bytes the caller wrote itself (``kernel.wire``).
    """

    def __init__(self, message_type: type[Message] | Message) -> None:
        kind = message_type if isinstance(message_type, type) else type(message_type)
        self.subject, self.message_type, content = _event_basics(kind)
        trace: dict[str, str] = {}
        inject_headers(trace)  # nothing when no span is being traced
        if trace:
            head = _json({CONTENT_TYPE_HEADER: content_type_of(kind), **trace})[:-1] + ", "
            self._prefix = head + _json(MSG_ID_HEADER) + ": "
        else:
            self._prefix = content

    def headers(self, msg_id: str) -> str:
        return self._prefix + _json(msg_id) + "}"

    def row(self, msg_id: str, payload: bytes) -> OutboxRow:
        return OutboxRow(msg_id, self.subject, self.message_type, payload, self.headers(msg_id))


_BASICS: dict[str, tuple[str, str, str]] = {}


def _json(value: object) -> str:
    """JSON text, as ``json.dumps`` but compact, by orjson: each decision's event
    rows encode their headers here (1.7 us a dict by json, 0.15 by orjson)."""
    return orjson.dumps(value).decode()


def _event_basics(message_type: type[Message]) -> tuple[str, str, str]:
    """A message type's subject, name, and its headers' JSON up to the message id
    when there is no trace context (once per type, not per decision)."""
    known = _BASICS.get(message_type.DESCRIPTOR.full_name)
    if known is not None:
        return known
    # Not message_headers(): it would add the trace context of whichever call came first.
    head = _json({CONTENT_TYPE_HEADER: content_type_of(message_type)})[:-1] + ", "
    prefix = head + _json(MSG_ID_HEADER) + ": "
    name = message_type.DESCRIPTOR.full_name
    _BASICS[name] = (subject_of(message_type), name, prefix)
    return _BASICS[name]


def outbox_row(message: Message, *, msg_id: str, subject: str | None = None) -> OutboxRow:
    """``message`` as an outbox row (captures the caller's trace context)."""
    return OutboxRow(
        msg_id,
        subject or subject_of(message),
        message.DESCRIPTOR.full_name,
        message.SerializeToString(),
        json.dumps(message_headers(message, msg_id)),
    )


# Columns of an outbox row and their PostgreSQL types, in OutboxRow's order.
ROW_COLUMNS = (
    ("msg_id", "text"), ("subject", "text"), ("message_type", "text"), ("payload", "bytea"),
    ("headers", "jsonb"),
)  # fmt: skip


def insert_rows_sql(table: Table, params: Sequence[str]) -> str:
    """``INSERT`` of the rows whose columns come as arrays in ``params`` (one
    placeholder per ``ROW_COLUMNS`` entry: ``$3`` for asyncpg, ``:payloads`` for
    SQLAlchemy); a msg id already in the outbox is skipped (idempotent retries).

    The one way rows reach an outbox: ``enqueue_rows`` runs it, a caller that
    writes its own data in the same statement (the recommender's group commit)
    embeds it in a ``WITH``.
    """
    return insert_from_arrays(table, ROW_COLUMNS, params) + " ON CONFLICT (msg_id) DO NOTHING"


def row_arrays(rows: Sequence[OutboxRow]) -> list[list[Any]]:
    """The rows' columns as arrays, in ``ROW_COLUMNS`` order."""
    if not rows:
        return [[] for _ in ROW_COLUMNS]
    return [list(column) for column in zip(*rows, strict=True)]


_PARAMS = tuple(f":{c}_values" for c, _ in ROW_COLUMNS)


@cache
def _enqueue_statement(table: Table) -> TextClause:
    # One round trip: insert, count, and wake the relay on commit when a row went in.
    return text(
        f"WITH o AS ({insert_rows_sql(table, _PARAMS)} RETURNING 1) "
        "SELECT n, CASE WHEN n > 0 THEN pg_notify(:channel, '') END "
        "FROM (SELECT count(*) AS n FROM o) AS c"
    )


async def enqueue_rows(session: AsyncSession, table: Table, rows: Sequence[OutboxRow]) -> int:
    """Add ``rows`` to the outbox inside the caller's transaction, in one statement.

    Returns how many were new: a row whose msg id is already in the outbox
    (a retried request) is skipped, as JetStream would drop its publish. The
    relay is woken when (and only if) the transaction commits.
    """
    if not rows:
        return 0
    params: dict[str, Any] = {
        p[1:]: column for p, column in zip(_PARAMS, row_arrays(rows), strict=True)
    }
    params["channel"] = notify_channel(table)
    result = await session.execute(_enqueue_statement(table), params)
    return int(result.scalar_one())


async def enqueue(
    session: AsyncSession,
    table: Table,
    message: Message,
    *,
    msg_id: str,
    subject: str | None = None,
) -> bool:
    """Add ``message`` to the outbox inside the caller's transaction.

    Returns False when ``msg_id`` is already in the outbox (a retried request):
    enqueueing is idempotent like publishing. The caller commits.
    """
    row = outbox_row(message, msg_id=msg_id, subject=subject)
    return await enqueue_rows(session, table, [row]) == 1


class OutboxRelay:
    """Publishes committed outbox rows to the bus; run one per service process."""

    def __init__(
        self,
        db: Database,
        bus: Bus,
        table: Table,
        *,
        batch: int = 200,
        poll_interval: float = 1.0,
        retention: float = 600.0,
        max_backoff: float = 10.0,
        publish_timeout: float = 5.0,
        linger: float = 0.0,
    ) -> None:
        self.db = db
        self.bus = bus
        self.table = table
        self.batch = batch
        self.poll_interval = poll_interval
        self.retention = retention
        self.max_backoff = max_backoff
        self.publish_timeout = publish_timeout
        # Seconds to wait after a wake before draining, so one transaction carries
        # the rows of many commits: under a steady stream of small commits each
        # wake otherwise pays a whole drain (lock, select, update, commit) for a
        # row or two. Delays publishing by as much; 0 (the default) drains at once.
        self.linger = linger
        self._wake = asyncio.Event()
        # Set while a LISTEN connection is attached (tests and health can wait for it).
        self.listening = asyncio.Event()
        self._lock_key = zlib.crc32(f"{table.schema}.{table.name}".encode()) & 0x7FFFFFFF
        name = f"{table.schema}.{table.name}"
        self._pending_sql = (
            f"SELECT id, subject, payload, headers::text FROM {name}"
            " WHERE published_at IS NULL ORDER BY id LIMIT $1"
        )
        self._mark_sql = f"UPDATE {name} SET published_at = now() WHERE id = ANY($1::bigint[])"
        self._last_prune = 0.0
        # Held while rounds find rows (``drain_once``).
        self._conn = HeldConnection(db)

    async def drain_once(self) -> int:
        """Publish up to ``batch`` pending rows in id order; return how many were published.

        Raises if publishing fails; rows published before the failure stay marked.
        The connection stays held after a round that found rows (more are likely
        to come: ``close`` gives it back), and goes back to the pool after one
        that found none.
        """
        published = await self._round()
        if not published:
            await self.close()
        return published

    async def _round(self) -> int:
        published: list[int] = []
        error: Exception | None = None
        # asyncpg itself, three prepared statements: through the ORM the lock,
        # select and update cost more than the publishing (py-spy, bench/decision.py).
        async with self._conn.use() as conn, conn.transaction():
            # One publisher per table at a time keeps the stream in outbox order.
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", self._lock_key):
                return 0
            rows = await conn.fetch(self._pending_sql, self.batch)
            if not rows:
                return 0
            # One wave for the batch: awaiting each ack in turn cost a flush and a
            # round trip per row (most of the relay's CPU under load).
            outcomes = await self.bus.publish_many(
                [(subject, payload, json.loads(headers)) for _, subject, payload, headers in rows],
                ack_timeout=self.publish_timeout,
            )
            for row, outcome in zip(rows, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    error = outcome
                    break  # keep order: later rows wait for the retry
                published.append(row[0])
            # Mark (and commit) what JetStream acked even when a later publish failed.
            if published:
                await conn.execute(self._mark_sql, published)
        if error is not None:
            raise error
        return len(published)

    async def prune(self) -> int:
        """Delete rows published more than ``retention`` seconds ago."""
        t = self.table
        async with self.db.transaction() as session:
            result = await session.execute(
                delete(t).where(t.c.published_at < _seconds_ago(self.retention))
            )
        return int(getattr(result, "rowcount", 0) or 0)

    async def _listen(self) -> None:
        """Wake on the table's NOTIFY (polling covers the gaps between connections)."""
        await self.db.listen(
            notify_channel(self.table),
            lambda _payload: self._wake.set(),
            attached=self.listening,
            retry_seconds=self.poll_interval,
        )

    async def run(self) -> None:
        """Relay until cancelled. Never drops a row: failures are retried with backoff."""
        listener = asyncio.create_task(self._listen())
        backoff = 0.1
        try:
            while True:
                raise_if_cancelled()  # a publish's swallowed cancel must still stop it
                self._wake.clear()
                try:
                    count = await self.drain_once()
                    backoff = 0.1
                except Exception as exc:
                    log.warning(
                        "outbox publish failed, retrying",
                        extra={"table": str(self.table), "error": repr(exc), "delay": backoff},
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.max_backoff)
                    continue
                if count >= self.batch:
                    continue  # more are pending: no need to wait
                await self._maybe_prune()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval):
                        await self._wake.wait()
                if self.linger > 0:
                    await asyncio.sleep(self.linger)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            await self.close()

    async def close(self) -> None:
        """Give the held connection back to the pool (``run`` does at exit; a caller
        of ``drain_once`` alone does when done)."""
        await self._conn.release()

    async def _maybe_prune(self) -> None:
        now = time.monotonic()
        if now - self._last_prune < max(self.retention / 10, 1.0):
            return
        self._last_prune = now
        try:
            await self.prune()
        except Exception as exc:
            log.warning("outbox prune failed", extra={"error": repr(exc)})


def _seconds_ago(seconds: float) -> ColumnElement[Any]:
    return func.now() - func.make_interval(0, 0, 0, 0, 0, 0, seconds)


# --- consumer side: processed messages ---------------------------------------------------


def processed_table(metadata: MetaData, name: str = "processed_messages") -> Table:
    """(consumer, msg_id) pairs already handled, in ``metadata``'s schema."""
    return Table(
        name,
        metadata,
        Column("consumer", Text, nullable=False),
        Column("msg_id", Text, nullable=False),
        Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        PrimaryKeyConstraint("consumer", "msg_id"),
    )


async def claim(session: AsyncSession, table: Table, *, consumer: str, msg_id: str) -> bool:
    """True the first time ``consumer`` sees ``msg_id``; False for a redelivery.

    Call it first in the handler's transaction: the claim commits with the
    handler's writes, or rolls back with them when the handler fails.
    """
    result = await session.execute(
        insert(table)
        .values(consumer=consumer, msg_id=msg_id)
        .on_conflict_do_nothing()
        .returning(table.c.msg_id)
    )
    return result.scalar() is not None


async def prune_processed(session: AsyncSession, table: Table, *, older_than: float) -> int:
    """Forget claims older than ``older_than`` seconds (keep > the redelivery horizon)."""
    result = await session.execute(
        delete(table).where(table.c.processed_at < _seconds_ago(older_than))
    )
    return int(getattr(result, "rowcount", 0) or 0)

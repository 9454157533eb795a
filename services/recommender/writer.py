"""Group commit of decisions: ListTips answers after its decision is durable.

The decision log must not lose a tip the user saw (a reaction to an unlogged
decision could never be rewarded), so a request waits for its commit. Writing
each request in its own transaction costs a round trip and a WAL flush per
request; instead requests queue their rows and one writer task commits all
that are waiting in one transaction (tips rows + outbox rows + one NOTIFY).
Under load a commit carries many decisions; alone, a request pays one commit.
The writer holds one connection and talks to asyncpg directly (prepared
``executemany``): the ORM session's per-transaction overhead was most of the
decision's CPU (bench/decision.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncConnection

from kernel.bus import subject_of
from kernel.db import Database
from kernel.outbox import notify_channel
from services.recommender.store import tips
from tips.recommender.v1 import events_pb2

log = logging.getLogger(__name__)

MAX_BATCH = 256
# Columns of a decision row, in the order of the prepared insert.
COLUMNS = (
    "user_id", "tip_id", "catalog_tip", "title", "body", "category", "explanation", "effort",
    "minutes_needed", "state", "reaction", "decide_time", "expire_time", "model_version",
    "catalog_version", "policy_version", "propensity", "explored", "rank", "row", "context",
    "candidates",
)  # fmt: skip
CASTS = {"context": "::jsonb", "candidates": "::jsonb"}


@dataclass
class _Pending:
    rows: list[dict[str, Any]]
    events: list[tuple[events_pb2.TipDecided, dict[str, str]]]
    done: asyncio.Future[None]


class DecisionWriter:
    """Queue decisions with ``write``; ``run`` commits them in batches."""

    def __init__(self, db: Database, outbox: Table) -> None:
        self.db = db
        self.outbox = outbox
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._sa_conn: AsyncConnection | None = None
        self._raw: Any = None
        marks = ", ".join(f"${i + 1}{CASTS.get(c, '')}" for i, c in enumerate(COLUMNS))
        self._tips_sql = (
            f"INSERT INTO {tips.schema}.{tips.name} ({', '.join(COLUMNS)}) VALUES ({marks})"
        )
        self._outbox_sql = (
            f"INSERT INTO {outbox.schema}.{outbox.name} "
            "(msg_id, subject, message_type, payload, headers) "
            "VALUES ($1, $2, $3, $4, $5::jsonb) ON CONFLICT (msg_id) DO NOTHING"
        )
        self.commits = 0
        self.written = 0

    async def write(
        self,
        rows: list[dict[str, Any]],
        events: list[tuple[events_pb2.TipDecided, dict[str, str]]],
    ) -> None:
        """Returns once the rows and their events are committed; raises if they were not."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(rows, events, done))
        await done

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit(batch)
            except asyncio.CancelledError:
                for p in batch:
                    if not p.done.done():
                        p.done.set_exception(RuntimeError("the recommender is stopping"))
                raise
            except Exception as exc:
                log.warning("decision commit failed", extra={"error": repr(exc), "n": len(batch)})
                for p in batch:
                    if not p.done.done():
                        p.done.set_exception(exc)
            else:
                for p in batch:
                    if not p.done.done():
                        p.done.set_result(None)

    async def _connection(self) -> Any:
        if self._raw is None:
            self._sa_conn = await self.db.engine.connect()
            raw = await self._sa_conn.get_raw_connection()
            self._raw = raw.driver_connection
        return self._raw

    async def _drop(self) -> None:
        conn, self._sa_conn, self._raw = self._sa_conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()
                await conn.close()

    async def _commit(self, batch: list[_Pending]) -> None:
        rows = [tuple(r[c] for c in COLUMNS) for p in batch for r in p.rows]
        if not rows:
            return
        outbox_rows = [
            (
                e.event_id,
                subject_of(e),
                e.DESCRIPTOR.full_name,
                e.SerializeToString(),
                json.dumps(headers),  # taken in the request: its trace context
            )
            for p in batch
            for e, headers in p.events
        ]
        conn = await self._connection()
        try:
            async with conn.transaction():
                await conn.executemany(self._tips_sql, rows)
                await conn.executemany(self._outbox_sql, outbox_rows)
                await conn.execute("SELECT pg_notify($1, '')", notify_channel(self.outbox))
        except Exception:
            await self._drop()  # a broken connection is not reused
            raise
        self.commits += 1
        self.written += len(rows)

    async def close(self) -> None:
        await self._drop()
        with contextlib.suppress(asyncio.QueueEmpty):
            while True:
                p = self._queue.get_nowait()
                if not p.done.done():
                    p.done.set_exception(RuntimeError("the recommender is stopping"))

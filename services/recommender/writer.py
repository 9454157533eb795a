"""Group commit of decisions: ListTips answers after its decision is durable.

The decision log must not lose a tip the user saw (a reaction to an unlogged
decision could never be rewarded), so a request waits for its commit. Writing
each request in its own transaction costs a round trip and a WAL flush per
request; instead requests queue their rows and one writer task commits all
that are waiting in one transaction (tips rows + outbox rows + one NOTIFY).
Under load a commit carries many decisions; alone, a request pays one commit.
The writer holds one connection and talks to asyncpg directly: the ORM
session's per-transaction overhead was most of the decision's CPU
(bench/decision.py). A batch is ONE statement (arrays ``unnest``ed into both
tables, the NOTIFY in its SELECT): atomic on its own, one round trip instead
of BEGIN, two ``executemany``, NOTIFY and COMMIT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table

from kernel.db import Database, HeldConnection, insert_from_arrays, is_unavailable
from kernel.outbox import ROW_COLUMNS, OutboxRow, insert_rows_sql, notify_channel, row_arrays
from services.recommender.store import tips

log = logging.getLogger(__name__)

MAX_BATCH = 256
# Columns of a decision row and their PostgreSQL types, in the statement's order.
COLUMNS = (
    ("user_id", "text"), ("tip_id", "text"), ("catalog_tip", "text"), ("title", "text"),
    ("body", "text"), ("category", "text"), ("explanation", "text"), ("effort", "int4"),
    ("minutes_needed", "int4"), ("state", "int4"), ("reaction", "int4"),
    ("decide_time", "timestamptz"), ("expire_time", "timestamptz"), ("model_version", "text"),
    ("catalog_version", "text"), ("policy_version", "text"), ("propensity", "float8"),
    ("explored", "bool"), ("rank", "int4"), ("row", "bytea"), ("context", "jsonb"),
    ("candidates", "jsonb"),
)  # fmt: skip


@dataclass
class _Pending:
    rows: list[dict[str, Any]]
    events: list[OutboxRow]
    done: asyncio.Future[None]


class DecisionWriter:
    """Queue decisions with ``write``; ``run`` commits them in batches."""

    def __init__(self, db: Database, outbox: Table) -> None:
        self.db = db
        self.outbox = outbox
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._conn = HeldConnection(db)
        params = [f"${n}" for n in range(1, len(COLUMNS) + len(ROW_COLUMNS) + 2)]
        tip_params, outbox_params = params[: len(COLUMNS)], params[len(COLUMNS) : -1]
        self._sql = (
            # ON CONFLICT: a batch retried after a connection lost mid-commit is a no-op.
            f"WITH t AS ({insert_from_arrays(tips, COLUMNS, tip_params)} "
            "ON CONFLICT (user_id, tip_id) DO NOTHING), "
            f"o AS ({insert_rows_sql(outbox, outbox_params)}) "
            f"SELECT pg_notify({params[-1]}, '')"
        )
        self._channel = notify_channel(outbox)
        self.commits = 0
        self.written = 0

    async def write(
        self,
        rows: list[dict[str, Any]],
        events: list[OutboxRow],
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

    async def _commit(self, batch: list[_Pending]) -> None:
        rows = [r for p in batch for r in p.rows]
        if not rows:
            return
        events = [e for p in batch for e in p.events]
        args: list[Any] = [[r[c] for r in rows] for c, _ in COLUMNS]
        args += row_arrays(events)
        for attempt in (1, 2):
            try:
                async with self._conn.use() as conn:  # dropped if the statement fails
                    await conn.execute(self._sql, *args, self._channel)
                break
            except Exception as exc:
                # A server restart leaves the held connection dead: one fresh try
                # (the statement is idempotent), then the callers get UNAVAILABLE.
                if attempt == 2 or not is_unavailable(exc):
                    raise
                log.info("decision writer reconnecting", extra={"error": type(exc).__name__})
        self.commits += 1
        self.written += len(rows)

    async def close(self) -> None:
        await self._conn.drop()
        with contextlib.suppress(asyncio.QueueEmpty):
            while True:
                p = self._queue.get_nowait()
                if not p.done.done():
                    p.done.set_exception(RuntimeError("the recommender is stopping"))

"""Failed sign-in limit per client address, counted in PostgreSQL.

A fixed window per client: after ``limit`` failures within ``window``
seconds, sign-ins from that client fail with RESOURCE_EXHAUSTED and a
RetryInfo saying when the window ends. Counting in the database (one row per
client, upserted) keeps the limit right with several auth replicas; rows of
ended windows are pruned in the background.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import case, delete, select
from sqlalchemy.dialects.postgresql import insert

from kernel.db import Database
from kernel.errors import ResourceExhausted
from services.auth import store


class FailureLimiter:
    def __init__(self, db: Database, limit: int, window_seconds: int) -> None:
        self.db = db
        self.limit = limit
        self.window = timedelta(seconds=window_seconds)

    async def check(self, client: str) -> None:
        """RESOURCE_EXHAUSTED when ``client`` used up its failures in this window."""
        t = store.signin_failures
        now = datetime.now(UTC)
        async with self.db.session() as session:
            row = (
                await session.execute(
                    select(t.c.window_start, t.c.failures).where(t.c.client == client)
                )
            ).first()
        if row is None or row.failures < self.limit or row.window_start + self.window <= now:
            return
        retry = row.window_start + self.window - now
        raise ResourceExhausted(
            "too many failed sign-ins from this client; try again later",
            reason="SIGN_IN_RATE_LIMITED",
            retry_after=timedelta(seconds=max(1, int(retry.total_seconds()) + 1)),
        )

    async def record_failure(self, client: str) -> None:
        t = store.signin_failures
        now = datetime.now(UTC)
        ended = t.c.window_start <= now - self.window
        async with self.db.transaction() as session:
            await session.execute(
                insert(t)
                .values(client=client, window_start=now, failures=1)
                .on_conflict_do_update(
                    index_elements=[t.c.client],
                    set_={
                        "window_start": case((ended, now), else_=t.c.window_start),
                        "failures": case((ended, 1), else_=t.c.failures + 1),
                    },
                )
            )

    async def prune(self) -> None:
        t = store.signin_failures
        async with self.db.transaction() as session:
            await session.execute(
                delete(t).where(t.c.window_start <= datetime.now(UTC) - self.window)
            )

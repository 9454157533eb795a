"""The read behind following a promotion (the rewards assigned after its time)
is served by an index, not a scan of the whole decision log (migration 0006)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
from sqlalchemy.dialects import postgresql

from kernel.migrations import migrate
from kernel.settings import Settings
from services.recommender import reward_store
from services.recommender.service import SERVICE as RECOMMENDER


async def test_the_rewards_since_a_promotion_are_read_through_an_index(
    settings: Settings, create_database: Callable[[], Awaitable[str]]
) -> None:
    database_url = await create_database()
    own = settings.model_copy(update={"database_url": database_url})
    await migrate(own, [RECOMMENDER])
    # The statement rewards_since runs, with its parameter inlined for EXPLAIN.
    statement = reward_store.rewards_since_statement(datetime(2026, 1, 1, tzinfo=UTC))
    sql = str(
        statement.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    )
    conn = await asyncpg.connect(database_url)
    try:
        # An empty table is cheapest to scan: ask whether the index can serve at all.
        await conn.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {sql}"))
    finally:
        await conn.close()
    assert "ix_tips_reward_time" in plan, plan

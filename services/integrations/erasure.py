"""Erasure in the integrations service (docs/erasure.md).

On ``tips.profile.v1.UserDeleted``, in one transaction with the message's
claim: the user's sealed tokens (the vault records), started authorizations
and connections (with their sync state: cursor, lease, schedule, counters)
are deleted. A sync running at that moment finds its connection gone: its
updates match no row and its token writes fail their foreign key, so nothing
comes back. After the commit the consent cache forgets the user.

Revoking the grants at the providers is not done yet (best effort, optional
in the protocol): the tokens are destroyed here, and they expire there.
"""

from __future__ import annotations

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.db import Database
from kernel.erasure import ErasureConsumer
from services.integrations import store
from services.integrations.consent import ConsentGate

DURABLE = "integrations-erasure"


async def purge_user(session: AsyncSession, user_id: str) -> int:
    """Delete every row of ``user_id`` in schema ``integrations``; rows deleted."""
    count = 0
    # Children first (the foreign keys cascade too; explicit keeps it obvious).
    for table in (store.tokens, store.oauth_states, store.connections):
        result = await session.execute(delete(table).where(table.c.user_id == user_id))
        count += int(getattr(result, "rowcount", 0) or 0)
    return count


def eraser(db: Database, gate: ConsentGate, durable: str = DURABLE) -> ErasureConsumer:
    return ErasureConsumer(db, store.processed_messages, durable, purge_user, gate.evict)

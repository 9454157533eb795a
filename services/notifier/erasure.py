"""Erasure in the notifier (docs/erasure.md).

On ``tips.profile.v1.UserDeleted``, in one transaction with the message's
claim: the user's devices (sealed push tokens included) and notifications
(the delivery log and whatever is still queued) are deleted. A delivery in
flight at that moment writes its result with a guard that matches no row,
so nothing comes back.
"""

from __future__ import annotations

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.db import Database
from kernel.erasure import ErasureConsumer
from services.notifier import store


async def purge_user(session: AsyncSession, user_id: str) -> int:
    """Delete every row of ``user_id`` in schema ``notifier``; rows deleted."""
    count = 0
    for table in (store.notifications, store.devices):
        result = await session.execute(delete(table).where(table.c.user_id == user_id))
        count += int(getattr(result, "rowcount", 0) or 0)
    return count


def eraser(db: Database, durable: str) -> ErasureConsumer:
    return ErasureConsumer(db, store.processed_messages, durable, purge_user)

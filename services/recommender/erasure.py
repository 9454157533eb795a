"""Erasure in the recommender (docs/erasure.md): the user's tips and context go.

On ``tips.profile.v1.UserDeleted``, in one transaction with the message's
claim: the user's decisions (tip history with their reactions and rewards)
and their persisted context are deleted. After the commit the in-memory read
models forget the user, so no later decision sees their past; every other
replica forgets the user too, from its own feed of ``UserDeleted``
(``ProfileCache.run``), since only one replica takes the shared consumer's message.

Kept on purpose: the policy's statistics. They are sums over every user's
features and rewards, not records of this user, and cannot be taken apart
per user (the same reason a trained model is not "the user's data").
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.db import Database
from kernel.erasure import ErasureConsumer
from services.recommender import store
from services.recommender.consumers import ContextKeeper
from services.recommender.history import HistoryKeeper
from services.recommender.profiles import ProfileCache


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


async def purge_user(session: AsyncSession, user_id: str) -> int:
    """Delete every recommender row of ``user_id`` in ``session``; rows deleted."""
    count = 0
    for table in (store.tips, store.user_context):
        count += _rowcount(await session.execute(delete(table).where(table.c.user_id == user_id)))
    return count


def eraser(db: Database, durable: str, forget: Callable[[str], None]) -> ErasureConsumer:
    """The shared consumer that deletes the rows; ``forget`` clears this replica's
    memory (every replica clears its own from ``ProfileCache``'s feed)."""
    return ErasureConsumer(db, store.processed, f"{durable}-erasure", purge_user, forget)


def forgetter(
    contexts: ContextKeeper, history: HistoryKeeper, profiles: ProfileCache
) -> Callable[[str], None]:
    """Forgets an erased user in every read model of this process."""

    def forget(user_id: str) -> None:
        contexts.forget(user_id)
        history.forget(user_id)
        profiles.forget(user_id)

    return forget

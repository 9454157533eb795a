"""Erasure in the events service (docs/erasure.md): the user's signals go.

``kernel.erasure.ErasureConsumer`` consumes ``tips.profile.v1.UserDeleted``
and claims each message in the transaction that runs ``purge``: every signal
of the user and every outbox row about them (published or not, so no
SignalRecorded of the user reaches the stream afterwards) are deleted, and a
``SignalsPurged`` (all signals, reason ACCOUNT_ERASURE) is enqueued for the
consumers of the events stream. A redelivery is claimed already and changes
nothing; deleting again would find nothing anyway.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from kernel.db import Database
from kernel.erasure import ErasureConsumer
from services.events import queries, store
from services.events.selectors import PurgeSelector
from tips.events.v1 import events_service_pb2

DURABLE = "events-erasure"


async def purge_user(session: AsyncSession, user_id: str) -> int:
    """Delete the user's signals and announce it; how many signals went."""
    count = await queries.erase_user(session, user_id)
    selector = PurgeSelector(
        user_id, all_signals=True, reason=events_service_pb2.PURGE_REASON_ACCOUNT_ERASURE
    )
    await queries.enqueue_purged(session, selector, count, queries.utcnow())
    return count


def eraser(db: Database, durable: str = DURABLE) -> ErasureConsumer:
    return ErasureConsumer(db, store.processed, durable, purge_user)

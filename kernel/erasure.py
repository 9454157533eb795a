"""The erasure consumer every service runs (protocol: docs/erasure.md).

A service gives a ``purge(session, user_id)`` that deletes the user's rows of
its schema; ``ErasureConsumer`` does the rest the same way everywhere:

- a durable pull consumer of ``tips.profile.v1.UserDeleted`` (stream
  TIPS_PROFILE), started before that stream may exist: ``consume_forever``
  retries with backoff until the profile service has declared it;
- ONE transaction per message: ``claim`` first, then ``purge``; the claim
  commits with the deletes or neither does, so a redelivery is skipped and a
  failure is redelivered (the bus naks with backoff, forever);
- ``after_commit`` (optional) drops the user from in-memory read models once
  the deletes are durable;
- a tombstone: the same transaction claims the user too (``processed``
  row ``(ERASED, sha256(user))``, no id in clear). Consumers that write a
  user's rows because of OTHER events (a ConsentChanged or SignalRecorded
  delivered after the UserDeleted, from another stream or durable) call
  ``guard_user`` first and write nothing for an erased user; both take the
  user's advisory lock, so a late event and the erasure cannot interleave.

    consumer = ErasureConsumer(db, store.processed_messages, "notifier-erasure", purge)
    runtime.spawn(consumer.run(bus))
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.bus import Bus, Delivery
from kernel.consumers import consume_forever, event_user
from kernel.db import Database, lock
from kernel.outbox import claim
from tips.profile.v1 import events_pb2 as profile_events

__all__ = ["ERASED", "ErasureConsumer", "Purge", "guard_user"]

log = logging.getLogger(__name__)

# Deletes the user's rows inside the given transaction; returns how many rows went.
Purge = Callable[[AsyncSession, str], Awaitable[int]]


# The ``consumer`` of the tombstone rows in a service's processed-messages table.
ERASED = "erased-user"


def _user_key(user_id: str) -> str:
    return hashlib.sha256(user_id.encode()).hexdigest()


async def _lock_user(session: AsyncSession, user_id: str) -> None:
    await lock(session, f"tips-erasure:{user_id}")


async def guard_user(session: AsyncSession, processed: Table, user_id: str) -> bool:
    """Lock ``user_id`` against a concurrent erasure; True when the user is erased.

    Call it in the transaction that would write the user's rows, and write
    nothing when it returns True: the event arrived after the erasure.
    """
    await _lock_user(session, user_id)
    key = _user_key(user_id)
    found = await session.execute(
        select(processed.c.msg_id).where(processed.c.consumer == ERASED, processed.c.msg_id == key)
    )
    return found.first() is not None


class ErasureConsumer:
    """Deletes a user's rows of one schema when the profile service erases the user."""

    def __init__(
        self,
        db: Database,
        processed: Table,
        durable: str,
        purge: Purge,
        after_commit: Callable[[str], None] | None = None,
    ) -> None:
        self.db = db
        self.processed = processed
        self.durable = durable
        self.purge = purge
        self.after_commit = after_commit

    async def handle(self, delivery: Delivery[profile_events.UserDeleted]) -> None:
        event = delivery.message
        user_id = event_user(delivery)
        if user_id is None:
            return
        msg_id = delivery.msg_id or event.event_id or event.erasure
        async with self.db.transaction() as session:
            if not await claim(session, self.processed, consumer=self.durable, msg_id=msg_id):
                return  # a redelivery: already purged
            await _lock_user(session, user_id)
            count = await self.purge(session, user_id)
            await claim(session, self.processed, consumer=ERASED, msg_id=_user_key(user_id))
        if self.after_commit is not None:
            self.after_commit(user_id)
        log.info(
            "user's data erased",
            extra={"consumer": self.durable, "msg_id": msg_id, "rows": count},
        )

    async def run(self, bus: Bus) -> None:
        """Consume until cancelled; waits for the profile stream if it is not there yet."""
        await consume_forever(
            bus, profile_events.UserDeleted, durable=self.durable, handler=self.handle
        )

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
  the deletes are durable.

    consumer = ErasureConsumer(db, store.processed_messages, "notifier-erasure", purge)
    runtime.spawn(consumer.run(bus))
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.bus import Bus, Delivery
from kernel.consumers import consume_forever
from kernel.db import Database
from kernel.errors import InvalidArgument
from kernel.identity import parse_user
from kernel.outbox import claim
from tips.profile.v1 import events_pb2 as profile_events

__all__ = ["ErasureConsumer", "Purge"]

log = logging.getLogger(__name__)

# Deletes the user's rows inside the given transaction; returns how many rows went.
Purge = Callable[[AsyncSession, str], Awaitable[int]]


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
        try:
            user_id = parse_user(event.user, "user")
        except InvalidArgument:
            # Redelivering cannot fix a malformed event: log it and ack it.
            log.error(
                "UserDeleted without a valid user skipped",
                extra={"consumer": self.durable, "msg_id": delivery.msg_id},
            )
            return
        msg_id = delivery.msg_id or event.event_id or event.erasure
        async with self.db.transaction() as session:
            if not await claim(session, self.processed, consumer=self.durable, msg_id=msg_id):
                return  # a redelivery: already purged
            count = await self.purge(session, user_id)
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

"""Erasure: deletes a user's signals when the profile service publishes UserDeleted.

A durable consumer of ``tips.profile.v1.user_deleted`` (stream TIPS_PROFILE,
which the profile service declares: until it exists the consumer retries with
backoff). In one transaction per message: ``claim`` the message id, delete
every signal of the user and every outbox row about them (published or not,
so no SignalRecorded of the user reaches the stream afterwards), and enqueue
a ``SignalsPurged`` (all signals, reason ACCOUNT_ERASURE) for the consumers
of the events stream. A redelivery is claimed already and changes nothing;
deleting again would find nothing anyway.
"""

from __future__ import annotations

import asyncio
import logging

from kernel.bus import Bus, Delivery, stream_of, subject_of
from kernel.db import Database
from kernel.errors import InvalidArgument
from kernel.identity import parse_user
from kernel.outbox import claim
from services.events import queries, store
from services.events.selectors import PurgeSelector
from tips.events.v1 import events_service_pb2
from tips.profile.v1 import events_pb2 as profile_events

log = logging.getLogger(__name__)

DURABLE = "events-erasure"


class Eraser:
    """Handles UserDeleted for the events schema."""

    def __init__(self, db: Database, durable: str = DURABLE) -> None:
        self.db = db
        self.durable = durable

    async def handle(self, delivery: Delivery[profile_events.UserDeleted]) -> None:
        event = delivery.message
        try:
            user_id = parse_user(event.user, "user")
        except InvalidArgument:
            # Redelivering cannot fix a malformed event: log it and ack it.
            log.error("UserDeleted without a valid user skipped", extra={"msg_id": delivery.msg_id})
            return
        async with self.db.transaction() as session:
            msg_id = delivery.msg_id or event.event_id
            if not await claim(session, store.processed, consumer=self.durable, msg_id=msg_id):
                return
            count = await queries.erase_user(session, user_id)
            selector = PurgeSelector(
                user_id, all_signals=True, reason=events_service_pb2.PURGE_REASON_ACCOUNT_ERASURE
            )
            await queries.enqueue_purged(session, selector, count, queries.utcnow())
        log.info("user's signals erased", extra={"msg_id": msg_id, "signals": count})

    async def run(self, bus: Bus) -> None:
        """Consume until cancelled; waits for TIPS_PROFILE if it is not there yet."""
        delay = 0.5
        while True:
            try:
                await bus.consume(
                    stream=stream_of(profile_events.UserDeleted),
                    durable=self.durable,
                    subjects=[subject_of(profile_events.UserDeleted)],
                    message_type=profile_events.UserDeleted,
                    handler=self.handle,
                )
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Typically the profile service has not declared its stream yet.
                log.warning(
                    "erasure consumer not running, retrying",
                    extra={"durable": self.durable, "error": repr(exc), "delay": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

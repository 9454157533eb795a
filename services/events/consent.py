"""The consent gate of ingest: no signal of a kind the user has not consented to.

The read model: a durable consumer of ``tips.profile.v1.ConsentChanged``
(stream TIPS_PROFILE; retried until the profile service declared it) keeps
each user's decision per purpose in ``events.consents`` (claimed with
``kernel.outbox.claim``, so a redelivery changes nothing) and in memory,
loaded at start and reloaded every ``events_consent_reload_seconds``.

The gate trusts a local "granted". A local "not granted" may only mean the
consumer has not caught up, so it asks the profile service's read model
(``kernel.profile_context``) once before refusing; a "granted" it confirms is cached
for ``events_consent_confirm_seconds`` (a ConsentChanged of the user evicts
it). When profile cannot be asked the item fails closed with UNAVAILABLE and
a retry hint. See docs/durable-log.md, "Consent gate".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from kernel.bus import Bus, Delivery
from kernel.consumers import consume_forever, event_user
from kernel.db import Database
from kernel.erasure import guard_user
from kernel.errors import DomainError, FailedPrecondition, Unavailable
from kernel.outbox import claim
from kernel.profile_context import ProfileUnavailable, consent_id, user_context
from kernel.timestamps import to_datetime
from services.events import store
from services.events.settings import EventsSettings
from tips.profile.v1 import consent_pb2, events_pb2

log = logging.getLogger(__name__)

DURABLE = "events-consents"
GRANTED = consent_pb2.CONSENT_STATE_GRANTED


class ConsentModel:
    """Each user's granted purposes: ``events.consents`` and a copy in memory."""

    def __init__(self, db: Database, durable: str = DURABLE) -> None:
        self.db = db
        self.durable = durable
        self.granted: dict[str, frozenset[int]] = {}
        self.on_change: Callable[[str], None] = lambda user_id: None

    async def load(self) -> None:
        """Replace the copy in memory with the table's granted rows."""
        loaded: dict[str, set[int]] = {}
        async with self.db.session() as session:
            rows = await session.execute(
                select(store.consents.c.user_id, store.consents.c.purpose).where(
                    store.consents.c.granted
                )
            )
            for user_id, purpose in rows:
                loaded.setdefault(user_id, set()).add(purpose)
        self.granted = {user: frozenset(purposes) for user, purposes in loaded.items()}

    async def reload_every(self, seconds: float) -> None:
        """Reload until cancelled (another replica's consumer may have applied a change)."""
        while True:
            await asyncio.sleep(seconds)
            try:
                await self.load()
            except Exception:
                log.exception("consent read model reload failed")

    async def handle(self, delivery: Delivery[events_pb2.ConsentChanged]) -> None:
        event = delivery.message
        user_id = event_user(delivery)
        if user_id is None:
            return
        at = to_datetime(event.occur_time) if event.HasField("occur_time") else datetime.now(UTC)
        table = store.consents
        async with self.db.transaction() as session:
            msg_id = delivery.msg_id or event.event_id
            if not await claim(session, store.processed, consumer=self.durable, msg_id=msg_id):
                return
            if await guard_user(session, store.processed, user_id):
                return  # delivered after the user's erasure: no row may come back
            upsert = insert(table).values(
                user_id=user_id,
                purpose=event.purpose,
                granted=event.state == GRANTED,
                update_time=at,
            )
            # An older decision delivered late does not overwrite a newer one.
            await session.execute(
                upsert.on_conflict_do_update(
                    index_elements=[table.c.user_id, table.c.purpose],
                    set_={"granted": upsert.excluded.granted, "update_time": at},
                    where=table.c.update_time <= upsert.excluded.update_time,
                )
            )
            rows = await session.execute(
                select(table.c.purpose).where(table.c.user_id == user_id, table.c.granted)
            )
            purposes = frozenset(rows.scalars())
        self.granted[user_id] = purposes
        self.on_change(user_id)

    async def run(self, bus: Bus) -> None:
        """Consume until cancelled; waits for TIPS_PROFILE if it is not there yet."""
        await consume_forever(
            bus,
            events_pb2.ConsentChanged,
            durable=self.durable,
            handler=self.handle,
            fetch_timeout=1.0,
        )


class ConsentGate:
    """Judges whether a user's item of some purpose may be stored."""

    def __init__(
        self,
        model: ConsentModel,
        settings: EventsSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.settings = settings
        self._clock = clock
        # user -> (when, purposes profile confirmed granted)
        self._confirmed: dict[str, tuple[float, frozenset[int]]] = {}
        model.on_change = self.evict

    def evict(self, user_id: str) -> None:
        self._confirmed.pop(user_id, None)

    async def errors(self, user_id: str, purposes: set[int]) -> dict[int, DomainError]:
        """The error of each purpose in ``purposes`` that the user has not granted."""
        missing = purposes - self.model.granted.get(user_id, frozenset())
        if not missing:
            return {}
        cached = self._confirmed.get(user_id)
        ttl = self.settings.events_consent_confirm_seconds
        if cached is not None and self._clock() - cached[0] < ttl:
            missing -= cached[1]
            if not missing:
                return {}
        # Only a "granted" is cached: a grant made a moment ago must not wait.
        try:
            context = await user_context(
                self.settings, user_id, rpc_timeout=self.settings.events_consent_timeout_seconds
            )
        except ProfileUnavailable:
            log.warning("profile unreachable: consent-gated items refused")
            retry = timedelta(seconds=self.settings.events_retry_after_seconds)
            return {
                p: Unavailable(
                    "the user's consents cannot be checked now; retry later",
                    reason="CONSENT_UNAVAILABLE",
                    retry_after=retry,
                )
                for p in missing
            }
        # No profile: nothing granted.
        granted = frozenset(context.granted_purposes) if context is not None else frozenset()
        if granted:
            self._confirmed[user_id] = (self._clock(), granted)
        return {
            p: FailedPrecondition(
                f"the user has not granted consent {consent_id(p)!r} for this kind of "
                f"signal: grant it first (POST /v1/users/me/consents/{consent_id(p)}:grant, "
                "ProfileService.GrantConsent), then send the signal again",
                reason="CONSENT_REQUIRED",
                metadata={"consent": consent_id(p)},
            )
            for p in missing - granted
        }

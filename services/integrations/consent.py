"""The consent gate: no fetch and no signal without the provider's purpose granted.

Granted purposes come from the profile service (``kernel.profile_context``), cached
for ``integrations_consent_cache_seconds``. ``ConsentChanged`` on
``TIPS_PROFILE`` evicts the user's entry at once, so a revocation stops the
next page of a running sync and every later run; a grant makes the user's
connections of that purpose due now.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy import func

from kernel.bus import Bus, Delivery
from kernel.consumers import consume_forever, event_user
from kernel.db import Database
from kernel.outbox import claim
from kernel.profile_context import ProfileUnavailable, consent_id, granted_ids, user_context
from services.integrations import store
from services.integrations.settings import IntegrationsSettings
from tips.profile.v1 import consent_pb2, events_pb2

log = logging.getLogger(__name__)


class ConsentUnknown(Exception):
    """The profile service could not be asked; the sync is retried later."""


class ConsentGate:
    def __init__(
        self, settings: IntegrationsSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}

    def evict(self, user_id: str) -> None:
        self._cache.pop(user_id, None)

    async def granted(self, user_id: str) -> frozenset[str]:
        """The user's granted purposes, as consent ids ("calendar-data-for-tips")."""
        ttl = self.settings.integrations_consent_cache_seconds
        cached = self._cache.get(user_id)
        if cached is not None and self._clock() - cached[0] < ttl:
            return cached[1]
        try:
            context = await user_context(self.settings, user_id)
        except ProfileUnavailable as exc:
            raise ConsentUnknown(str(exc)) from None
        # No profile: nothing granted.
        purposes = granted_ids(context) if context is not None else frozenset()
        self._cache[user_id] = (self._clock(), purposes)
        return purposes

    async def allows(self, user_id: str, purpose: str) -> bool:
        return purpose in await self.granted(user_id)


class ConsentListener:
    """Consumes ``ConsentChanged``: evicts the gate's cache, reschedules on grant."""

    def __init__(
        self,
        db: Database,
        gate: ConsentGate,
        durable: str,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.gate = gate
        self.durable = durable
        self.wake = wake

    async def handle(self, delivery: Delivery[events_pb2.ConsentChanged]) -> None:
        event = delivery.message
        user_id = event_user(delivery)
        if user_id is None:
            return
        self.gate.evict(user_id)
        if event.state != consent_pb2.CONSENT_STATE_GRANTED:
            return  # running syncs see the revocation at their next page
        purpose = consent_id(event.purpose)
        async with self.db.transaction() as session:
            msg_id = delivery.msg_id or event.event_id
            if not await claim(
                session, store.processed_messages, consumer=self.durable, msg_id=msg_id
            ):
                return
            for row in await store.connections_with_purpose(session, user_id, purpose):
                if row.state in store.SCHEDULABLE and not row.paused:
                    await store.update_connection(
                        session, user_id, row.connection_id, next_run_time=func.now()
                    )
        self.wake()

    async def run(self, bus: Bus) -> None:
        """Consume until cancelled; waits for the profile stream if it is not there yet."""
        await consume_forever(
            bus,
            events_pb2.ConsentChanged,
            durable=self.durable,
            handler=self.handle,
            fetch_timeout=1.0,
        )

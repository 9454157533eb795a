"""Bus consumers of the profile service.

- ``SignUps``: ``tips.auth.v1.UserSignedUp`` (stream TIPS_AUTH) creates the
  new user's profile. Idempotent twice over: the message id is claimed in the
  same transaction, and creating an existing (seeded) profile changes nothing.
  A sign-up arriving after the user was erased is acked and ignored.
- ``ReplicaSync``: with several replicas, each follows the service's own
  ProfileChanged / ConsentChanged / UserDeleted to keep its read model current.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from kernel.bus import Bus, Delivery
from kernel.consumers import consume_forever, event_user
from kernel.outbox import claim
from services.profile import store
from services.profile.core.profiles import Profiles, SignUp, clean_display_name, lock_user
from tips.auth.v1 import events_pb2 as auth_events
from tips.profile.v1 import events_pb2

log = logging.getLogger(__name__)


class SignUps:
    """Creates a profile for each new user."""

    def __init__(self, profiles: Profiles, durable: str) -> None:
        self.profiles = profiles
        self.durable = durable

    async def handle(self, delivery: Delivery[auth_events.UserSignedUp]) -> None:
        event = delivery.message
        user_id = event_user(delivery)
        if user_id is None:
            return
        signup = SignUp(
            display_name=clean_display_name(event.display_name),
            email=event.email.strip() if event.email_verified else "",
        )
        async with self.profiles.db.transaction() as session:
            if not await claim(
                session,
                store.processed,
                consumer=self.durable,
                msg_id=delivery.msg_id or event.event_id,
            ):
                return  # a redelivery: already handled
            await lock_user(session, user_id)
            if await store.is_erased(session, user_id):
                return
            profile, _ = await self.profiles.create_in(session, user_id, signup)
        self.profiles.contexts.put_profile(user_id, profile)

    async def run(self, bus: Bus) -> None:
        """Consume until cancelled; waits for auth's stream if it is not there yet."""
        await consume_forever(
            bus, auth_events.UserSignedUp, durable=self.durable, handler=self.handle
        )


class ReplicaSync:
    """Applies the service's own events (written by any replica) to this replica's read model."""

    def __init__(self, profiles: Profiles, durable: str) -> None:
        self.profiles = profiles
        self.durable = durable

    async def on_profile(self, delivery: Delivery[events_pb2.ProfileChanged]) -> None:
        self.profiles.contexts.apply_profile_changed(delivery.message)

    async def on_consent(self, delivery: Delivery[events_pb2.ConsentChanged]) -> None:
        self.profiles.contexts.apply_consent_changed(delivery.message)

    async def on_deleted(self, delivery: Delivery[events_pb2.UserDeleted]) -> None:
        self.profiles.contexts.apply_user_deleted(delivery.message)

    def tasks(self, bus: Bus) -> list[Awaitable[None]]:
        """One consumer per event type (the bus decodes one message type per consumer)."""
        return [
            consume_forever(
                bus, events_pb2.ProfileChanged, durable=f"{self.durable}-profiles",
                handler=self.on_profile,
            ),
            consume_forever(
                bus, events_pb2.ConsentChanged, durable=f"{self.durable}-consents",
                handler=self.on_consent,
            ),
            consume_forever(
                bus, events_pb2.UserDeleted, durable=f"{self.durable}-deletions",
                handler=self.on_deleted,
            ),
        ]  # fmt: skip

"""Bus consumers of the profile service.

- ``SignUps``: ``tips.auth.v1.UserSignedUp`` (stream TIPS_AUTH) creates the
  new user's profile. Idempotent twice over: the message id is claimed in the
  same transaction, and creating an existing (seeded) profile changes nothing.
  A sign-up arriving after the user was erased is acked and ignored.
- ``ReplicaSync``: with several replicas, each follows the service's own
  ProfileChanged / ConsentChanged / UserDeleted to keep its read model current.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from kernel.bus import Bus, Delivery, stream_of, subject_of
from kernel.errors import InvalidArgument
from kernel.outbox import claim
from services.profile import names, store
from services.profile.profiles import Profiles, SignUp, clean_display_name, lock_user
from tips.auth.v1 import events_pb2 as auth_events
from tips.profile.v1 import events_pb2

log = logging.getLogger(__name__)


async def run_forever(what: str, consume: Callable[[], Awaitable[None]]) -> None:
    """Run a consumer, retrying while its stream is not declared yet."""
    delay = 0.5
    while True:
        try:
            await consume()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Typically the owner of the stream (auth) has not started yet.
            log.warning(
                "consumer not running, retrying",
                extra={"consumer": what, "error": repr(exc), "delay": delay},
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


class SignUps:
    """Creates a profile for each new user."""

    def __init__(self, profiles: Profiles, durable: str) -> None:
        self.profiles = profiles
        self.durable = durable

    async def handle(self, delivery: Delivery[auth_events.UserSignedUp]) -> None:
        event = delivery.message
        try:
            user_id = names.parse_user_name(event.user, "user")
        except InvalidArgument:
            # Redelivery cannot fix a malformed event: log it and ack it.
            log.error(
                "sign-up event without a valid user skipped", extra={"msg_id": delivery.msg_id}
            )
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
        message = auth_events.UserSignedUp
        await run_forever(
            self.durable,
            lambda: bus.consume(
                stream=stream_of(message),
                durable=self.durable,
                subjects=[subject_of(message)],
                message_type=message,
                handler=self.handle,
            ),
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
        out: list[Awaitable[None]] = []
        for message, handler, suffix in (
            (events_pb2.ProfileChanged, self.on_profile, "profiles"),
            (events_pb2.ConsentChanged, self.on_consent, "consents"),
            (events_pb2.UserDeleted, self.on_deleted, "deletions"),
        ):
            durable = f"{self.durable}-{suffix}"
            out.append(
                run_forever(
                    durable,
                    lambda m=message, h=handler, d=durable: bus.consume(  # type: ignore[misc]
                        stream=stream_of(m),
                        durable=d,
                        subjects=[subject_of(m)],
                        message_type=m,
                        handler=h,
                    ),
                )
            )
        return out

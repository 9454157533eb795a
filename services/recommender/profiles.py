"""Each user's preferences and consents, cached in memory for the hot path.

The first decision for a user asks the profile service's read model
(``ProfileInternalService.GetUserContext``); its answer is cached and kept
current by ``ProfileChanged`` / ``ConsentChanged`` from stream TIPS_PROFILE,
which every replica reads whole (an ephemeral consumer of its own: a cache
fed by a shared durable would see only its share of the updates).
When the profile service cannot answer (down, UNIMPLEMENTED, no profile) the
user gets the defaults - UTC, no quiet hours, muted nothing, NO consents, so
tips needing consent are not offered - and the lookup is retried after
``recommender_profile_retry_seconds``; events received meanwhile still apply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from kernel import localtime
from kernel.bus import Bus, Delivery, stream_of, subject_of
from kernel.consumers import check_declared, event_user
from kernel.profile_context import ProfileUnavailable, consent_id, granted_ids, user_context
from kernel.timestamps import to_datetime
from services.recommender.eligibility import Prefs
from services.recommender.settings import RecommenderSettings
from tips.profile.v1 import consent_pb2, events_pb2, profile_pb2

log = logging.getLogger(__name__)

GRANTED = consent_pb2.CONSENT_STATE_GRANTED
# Updates replayed from before the process started (see ``run``).
FOLLOW_WINDOW_S = 60.0


def prefs_of(profile: profile_pb2.Profile, granted: frozenset[str]) -> Prefs:
    return Prefs(
        tz=localtime.zone(profile.time_zone),
        time_zone=profile.time_zone or "UTC",
        quiet_hours=localtime.windows_of(profile),
        granted=granted,
        muted=frozenset(profile.muted_categories),
        daily_cap=profile.daily_tip_cap,
        known=True,
    )


class ProfileCache:
    """User id -> Prefs, with single-flight lookups and event updates."""

    def __init__(self, settings: RecommenderSettings) -> None:
        self.settings = settings
        self._prefs: dict[str, Prefs] = {}
        self._retry_at: dict[str, float] = {}
        self._inflight: dict[str, asyncio.Future[Prefs]] = {}
        self._times: dict[str, datetime] = {}  # newest event applied per user
        self.unavailable = 0  # lookups the profile service could not answer

    def forget(self, user_id: str) -> None:
        """Drop an erased user's cached preferences."""
        for cache in (self._prefs, self._retry_at, self._times):
            cache.pop(user_id, None)

    async def get(self, user_id: str) -> Prefs:
        cached = self._prefs.get(user_id)
        if cached is not None and (
            cached.known or time.monotonic() < self._retry_at.get(user_id, 0.0)
        ):
            return cached
        pending = self._inflight.get(user_id)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(user_id, cached))
            self._inflight[user_id] = pending
            pending.add_done_callback(lambda _f: self._inflight.pop(user_id, None))
        return await asyncio.shield(pending)

    async def _fetch(self, user_id: str, cached: Prefs | None) -> Prefs:
        try:
            # The caller's identity goes along: they own the profile asked for.
            context = await user_context(
                self.settings,
                user_id,
                rpc_timeout=self.settings.recommender_profile_timeout_seconds,
            )
        except ProfileUnavailable:
            context = None
        if context is None:
            self.unavailable += 1
            log.info("profile unavailable, using defaults", extra={"user": user_id})
            self._retry_at[user_id] = (
                time.monotonic() + self.settings.recommender_profile_retry_seconds
            )
            prefs = cached or Prefs()
            self._prefs[user_id] = prefs
            return prefs
        prefs = prefs_of(context.profile, granted_ids(context))
        self._prefs[user_id] = prefs
        self._times[user_id] = to_datetime(context.update_time)
        return prefs

    # --- events --------------------------------------------------------------------

    def _newer(self, user_id: str, when: datetime) -> bool:
        last = self._times.get(user_id)
        if last is not None and when < last:
            return False  # a replay or a reordered event: the cache is newer
        self._times[user_id] = when
        return True

    async def on_profile(self, delivery: Delivery[events_pb2.ProfileChanged]) -> None:
        event = delivery.message
        user_id = event_user(delivery)
        if user_id is None:
            return
        if not self._newer(user_id, to_datetime(event.occur_time)):
            return
        granted = self._prefs.get(user_id, Prefs()).granted
        known = self._prefs.get(user_id, Prefs()).known
        self._prefs[user_id] = replace(prefs_of(event.profile, granted), known=known)

    async def on_consent(self, delivery: Delivery[events_pb2.ConsentChanged]) -> None:
        event = delivery.message
        user_id = event_user(delivery)
        if user_id is None:
            return
        # Consents are per purpose: order them per purpose, not per user.
        key = f"{user_id}#{event.purpose}"
        if not self._newer(key, to_datetime(event.occur_time)):
            return
        prefs = self._prefs.get(user_id, Prefs())
        purpose = consent_id(event.purpose)
        granted = prefs.granted | {purpose} if event.state == GRANTED else prefs.granted - {purpose}
        self._prefs[user_id] = replace(prefs, granted=granted)

    async def run(self, bus: Bus, forget: Callable[[str], None] | None = None) -> None:
        """Follow TIPS_PROFILE until cancelled, from a little before this process
        started (an update racing the first lookup is applied or found older).

        ``forget`` is called with each deleted user: every replica's memory
        forgets them (the erasure consumer, shared, runs in one replica).
        """
        start = datetime.now(UTC) - timedelta(seconds=FOLLOW_WINDOW_S)
        forget_user = forget or self.forget

        async def on_deleted(delivery: Delivery[events_pb2.UserDeleted]) -> None:
            user_id = event_user(delivery)
            if user_id is not None:
                forget_user(user_id)

        feeds: list[tuple[Any, Any]] = [
            (events_pb2.ProfileChanged, self.on_profile),
            (events_pb2.ConsentChanged, self.on_consent),
            (events_pb2.UserDeleted, on_deleted),
        ]
        for event, _ in feeds:
            check_declared(bus.name, event)
        await asyncio.gather(
            *(
                bus.follow(
                    stream=stream_of(event),
                    subjects=[subject_of(event)],
                    message_type=event,
                    handler=handler,
                    start_time=start,
                )
                for event, handler in feeds
            )
        )

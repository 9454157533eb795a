"""SendNotification: record a notification, then deliver it later or suppress it now.

The checks run in the order the contract names: consent (NO_CONSENT), a
channel that reaches the user (NO_CHANNEL), deduplication (DUPLICATE), quiet
hours (QUIET_HOURS), the daily cap (FREQUENCY_CAP). A notification passing
all of them is QUEUED for the delivery worker, or HELD for the user's daily
digest when it is on and the request is not urgent (quiet hours are then the
digest's business: ``digests.py``); the answer never waits for a push
service or mail server.

Everything for one user happens under a per-user advisory lock in one
transaction, so two concurrent calls cannot both pass the cap, both escape
the dedupe, or both record the same ``request_id``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.dialects.postgresql import insert

from kernel import localtime
from kernel.db import Database
from kernel.profile_context import user_context
from services.notifier import digest_rules, domain
from services.notifier.clock import Clock, system_clock
from services.notifier.core import devices, notifications
from services.notifier.core.digests import lock_user
from services.notifier.settings import NotifierSettings
from tips.notifier.v1 import notifier_service_pb2 as pb
from tips.profile.v1 import user_context_pb2

n = notifications.n


@dataclass
class Verdict:
    """What the checks decided."""

    state: int
    reason: int = 0
    channel: int = 0
    duplicate_of: str = ""
    due: datetime | None = None
    local_day: Any = None
    hold_from: datetime | None = None  # HELD: from when it may go


class Sender:
    def __init__(
        self,
        db: Database,
        settings: NotifierSettings,
        wake: Callable[[], None],
        clock: Clock = system_clock,
    ) -> None:
        self.db = db
        self.settings = settings
        self.wake = wake
        self.clock = clock

    async def send(self, request: pb.SendNotificationRequest) -> pb.SendNotificationResponse:
        now = self.clock()
        inp = domain.check_send(request, now)
        if inp.request_id:  # a retry: answer without asking the profile service again
            async with self.db.session() as session:
                row = await notifications.by_request(session, inp.user_id, inp.request_id)
            if row is not None:
                return _response(row)
        # Asked before the transaction: no DB connection is held across the call.
        context = await user_context(
            self.settings, inp.user_id, rpc_timeout=self.settings.notifier_profile_timeout_seconds
        )
        async with self.db.transaction() as session:
            await lock_user(session, inp.user_id)
            row = await notifications.by_request(session, inp.user_id, inp.request_id)
            if row is not None:
                return _response(row)
            verdict = await self._decide(session, inp, context, now)
            values: dict[str, Any] = {
                "user_id": inp.user_id,
                "notification_id": notifications.new_id(),
                "tip": inp.tip,
                "title": inp.title,
                "body": inp.body,
                "channel": verdict.channel,
                "requested_channels": list(inp.channels),
                "state": verdict.state,
                "suppression_reason": verdict.reason,
                "dedupe_key": inp.dedupe_key,
                "duplicate_of": verdict.duplicate_of,
                "data": inp.data,
                "request_id": inp.request_id,
                "local_day": verdict.local_day,
                # Deferred past quiet hours: the new time is what the log shows.
                "not_before_time": max(inp.not_before or now, verdict.due or now)
                if (inp.not_before or (verdict.due and verdict.due > now))
                else None,
                "expire_time": inp.expire,
                "next_attempt_at": verdict.due if verdict.state in _QUEUES else None,
                "create_time": now,
                "update_time": now,
                **_hold_values(verdict),
            }
            row = (await session.execute(insert(n).values(**values).returning(*n.c))).one()
            if verdict.state == domain.SUPPRESSED:
                await notifications.publish_outcome(session, row)
        if verdict.state in _QUEUES and verdict.due is not None and verdict.due <= now:
            self.wake()
        return _response(row)

    async def _decide(
        self,
        session: Any,
        inp: domain.SendInput,
        context: user_context_pb2.UserContext | None,
        now: datetime,
    ) -> Verdict:
        allowed = domain.allowed_channels(context, inp.channels)
        if context is None or not allowed:
            return Verdict(domain.SUPPRESSED, domain.NO_CONSENT)
        has_device = domain.PUSH in allowed and await devices.has_active(session, inp.user_id)
        channel = domain.choose_channel(allowed, domain.Reach(has_device, context.profile.email))
        if channel is None:
            return Verdict(domain.SUPPRESSED, domain.NO_CHANNEL)
        window = timedelta(seconds=self.settings.notifier_dedupe_window_seconds)
        first = await notifications.first_live_with_key(
            session, inp.user_id, inp.dedupe_key, now - window
        )
        if first is not None:
            return Verdict(
                domain.SUPPRESSED,
                domain.DUPLICATE,
                channel,
                duplicate_of=domain.notification_name(inp.user_id, first),
            )
        tz = localtime.zone(context.profile.time_zone)
        due = max(now, inp.not_before or now)
        digest_due = None if inp.urgent else digest_rules.due(due, context.profile)
        if digest_due is not None:  # held for the digest, which minds quiet hours itself
            day = localtime.local_day(digest_due, tz)
            if await self._capped(session, inp, context, day):
                return Verdict(domain.SUPPRESSED, domain.FREQUENCY_CAP, channel)
            return Verdict(
                domain.HELD, channel=channel, due=digest_due, local_day=day, hold_from=due
            )
        quiet_end = localtime.quiet_until(due, tz, localtime.windows_of(context.profile))
        if quiet_end is not None:
            expired = inp.expire is not None and inp.expire <= quiet_end
            if self.settings.notifier_quiet_hours_mode == "suppress" or expired:
                return Verdict(domain.SUPPRESSED, domain.QUIET_HOURS, channel)
            due = quiet_end
        day = localtime.local_day(due, tz)
        if await self._capped(session, inp, context, day):
            return Verdict(domain.SUPPRESSED, domain.FREQUENCY_CAP, channel)
        return Verdict(domain.QUEUED, channel=channel, due=due, local_day=day)

    async def _capped(
        self, session: Any, inp: domain.SendInput, context: user_context_pb2.UserContext, day: Any
    ) -> bool:
        # Held tips count on their digest's day: the cap limits tips, not messages.
        cap = context.profile.daily_tip_cap or self.settings.notifier_daily_cap
        return await notifications.live_on_day(session, inp.user_id, day) >= cap


# States the worker takes from the queue at ``next_attempt_at``.
_QUEUES = (domain.QUEUED, domain.HELD)


def _hold_values(verdict: Verdict) -> dict[str, Any]:
    if verdict.state != domain.HELD:
        return {}
    return {"digest_due_at": verdict.due, "hold_from": verdict.hold_from}


def _response(row: Any) -> pb.SendNotificationResponse:
    suppressed = row.state == domain.SUPPRESSED
    return pb.SendNotificationResponse(
        notification=notifications.to_proto(row),
        suppressed=suppressed,
        suppression_reason=int(row.suppression_reason) if suppressed else 0,  # type: ignore[arg-type]
    )

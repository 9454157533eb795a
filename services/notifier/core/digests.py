"""The daily digest: tips HELD for it, built into one notification, delivered by the worker.

A held tip is a row of the delivery queue like any other: HELD, due at its
``digest_due_at`` (``next_attempt_at`` carries the same time for the
worker). When the worker claims due held rows it calls ``build`` for their
user, which in ONE transaction, under the same per-user lock as
SendNotification:

- leaves out (FAILED, DEADLINE_EXCEEDED) the tips that expired meanwhile;
- inserts the digest notification (kind DIGEST, QUEUED, due now) with their
  titles and bodies, one per channel the tips were to go on (normally one);
- marks each tip QUEUED with ``digest_id`` pointing at it.

So a crash before the commit leaves the tips HELD (claimed again when the
lease ends) and a crash after it leaves a queued digest the worker delivers
like any notification: never lost, never built twice. When the digest
reaches a final state, ``finish_items`` gives its tips the same state in the
same transaction (``Worker._finish``).

A digest due in quiet hours is not built: its tips wait for the end of the
quiet period (always deferred, whatever TIPS_NOTIFIER_QUIET_HOURS_MODE says:
the user asked for the digest).

``reschedule`` follows the profile: on ``ProfileChanged`` touching ``digest``
or ``time_zone``, each held tip not yet due moves to the next digest time
under the current settings; with the digest off, to now, so what was held
goes out at once, in one last digest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import grpc
from google.rpc import status_pb2  # type: ignore[import-untyped]
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from kernel import localtime
from kernel.bus import Delivery
from kernel.db import Database, lock
from kernel.errors import InvalidArgument
from kernel.identity import parse_user
from kernel.profile_context import user_context
from services.notifier import digest_rules, domain
from services.notifier.clock import Clock
from services.notifier.core import notifications
from services.notifier.settings import NotifierSettings
from tips.profile.v1 import events_pb2 as profile_events
from tips.profile.v1 import user_context_pb2

log = logging.getLogger(__name__)
n = notifications.n
# Profile fields that move a held tip's digest time.
_MOVES_DIGEST = frozenset({"digest", "time_zone"})


async def lock_user(session: AsyncSession, user_id: str) -> None:
    """The per-user lock SendNotification takes: holding and building never interleave."""
    await lock(session, f"notifier:{user_id}")


def _expired_status() -> bytes:
    status = status_pb2.Status(
        code=grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
        message="expired before its daily digest was sent",
    )
    return bytes(status.SerializeToString())


class Digests:
    def __init__(
        self, db: Database, settings: NotifierSettings, clock: Clock, wake: Callable[[], None]
    ) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self.wake = wake

    async def _held(self, session: AsyncSession, user_id: str) -> list[Any]:
        rows = await session.execute(
            select(n)
            .where(n.c.user_id == user_id, n.c.state == domain.HELD)
            .order_by(n.c.create_time, n.c.notification_id)
            .with_for_update()
        )
        return list(rows.all())

    # --- building --------------------------------------------------------------------------

    async def build(self, user_id: str) -> list[str]:
        """Build the user's due digests; the new digest notification ids (none when
        nothing is due, or it is deferred past quiet hours)."""
        # Asked before the transaction: no DB connection is held across the call.
        # ProfileUnavailable propagates: the claim's lease brings the tips back.
        context = await user_context(
            self.settings, user_id, rpc_timeout=self.settings.notifier_profile_timeout_seconds
        )
        now = self.clock()
        quiet_end = _quiet_end(context, now)
        async with self.db.transaction() as session:
            await lock_user(session, user_id)
            held = await self._held(session, user_id)
            due = [r for r in held if r.digest_due_at <= now]
            # Claimed but not due (moved meanwhile): back to their own time.
            for row in held:
                if row.digest_due_at > now and row.next_attempt_at != row.digest_due_at:
                    await self._move(session, row, row.digest_due_at)
            if not due:
                return []
            if quiet_end is not None:
                for row in due:
                    await self._move(session, row, quiet_end)
                log.info("digest deferred past quiet hours", extra={"items": len(due)})
                return []
            live = []
            for row in due:
                if row.expire_time is not None and row.expire_time <= now:
                    await self._drop_expired(session, row, now)
                else:
                    live.append(row)
            built = [
                await self._insert_digest(session, user_id, channel, rows, now)
                for channel, rows in _by_channel(live).items()
            ]
        if built:
            self.wake()
        return built

    async def _insert_digest(
        self, session: AsyncSession, user_id: str, channel: int, rows: list[Any], now: datetime
    ) -> str:
        digest_id = notifications.new_id()
        title, body = digest_rules.text([digest_rules.Item(r.title, r.body) for r in rows], channel)
        await session.execute(
            insert(n).values(
                user_id=user_id,
                notification_id=digest_id,
                kind=domain.DIGEST,
                tip="",
                title=title,
                body=body,
                channel=channel,
                requested_channels=[channel],
                state=domain.QUEUED,
                dedupe_key="",  # never a duplicate of a tip
                data={"kind": "digest"},
                create_time=now,
                update_time=now,
                next_attempt_at=now,
            )
        )
        await session.execute(
            update(n)
            .where(
                n.c.user_id == user_id,
                n.c.notification_id.in_([r.notification_id for r in rows]),
                n.c.state == domain.HELD,
            )
            .values(
                state=domain.QUEUED,
                digest_id=digest_id,
                next_attempt_at=None,  # the digest is what the worker delivers
                update_time=now,
            )
        )
        log.info("digest built", extra={"notification": digest_id, "items": len(rows)})
        return digest_id

    async def _drop_expired(self, session: AsyncSession, row: Any, now: datetime) -> None:
        final = (
            await session.execute(
                update(n)
                .where(n.c.user_id == row.user_id, n.c.notification_id == row.notification_id)
                .values(
                    state=domain.FAILED,
                    error=_expired_status(),
                    next_attempt_at=None,
                    update_time=now,
                )
                .returning(*n.c)
            )
        ).one()
        await notifications.publish_outcome(session, final)

    async def _move(self, session: AsyncSession, row: Any, when: datetime) -> None:
        """A held tip's digest time (shown as its not_before_time) and queue time."""
        await session.execute(
            update(n)
            .where(n.c.user_id == row.user_id, n.c.notification_id == row.notification_id)
            .values(
                digest_due_at=when,
                next_attempt_at=when,
                not_before_time=when,
                update_time=self.clock(),
            )
        )

    # --- the digest's outcome is its tips' ----------------------------------------------------

    @staticmethod
    async def finish_items(session: AsyncSession, digest: Any) -> None:
        """Give the digest's tips its final state, in the caller's transaction."""
        rows = await session.execute(
            update(n)
            .where(
                n.c.user_id == digest.user_id,
                n.c.digest_id == digest.notification_id,
                n.c.state == domain.QUEUED,
            )
            .values(
                state=digest.state,
                suppression_reason=digest.suppression_reason,
                error=digest.error,
                send_time=digest.send_time,
                devices=digest.devices,
                update_time=func.now(),
            )
            .returning(*n.c)
        )
        for item in rows.all():
            await notifications.publish_outcome(session, item)

    # --- following the profile --------------------------------------------------------------

    async def reschedule(self, user_id: str) -> int:
        """Move the user's held tips that are not due yet to the digest time of the
        current settings (now when the digest is off); how many moved."""
        async with self.db.session() as session:
            waiting = await session.execute(
                select(n.c.notification_id)
                .where(n.c.user_id == user_id, n.c.state == domain.HELD)
                .limit(1)
            )
            if waiting.first() is None:
                return 0  # the common case: nothing held, no profile call
        context = await user_context(
            self.settings, user_id, rpc_timeout=self.settings.notifier_profile_timeout_seconds
        )
        now = self.clock()
        moved = 0
        async with self.db.transaction() as session:
            await lock_user(session, user_id)
            for row in await self._held(session, user_id):
                if row.digest_due_at <= now:
                    continue  # due: the worker builds it, moving it could skip a day
                start = max(now, row.hold_from or now)
                when = (digest_rules.due(start, context.profile) if context else None) or start
                if when != row.digest_due_at:
                    await self._move(session, row, when)
                    moved += 1
        if moved:
            self.wake()
        return moved

    async def on_profile_changed(self, delivery: Delivery[profile_events.ProfileChanged]) -> None:
        """``ProfileChanged`` consumer: a trigger only; ``reschedule`` reads the current
        profile, so replays and reordering are harmless."""
        event = delivery.message
        if event.created or not _MOVES_DIGEST & set(event.changed_fields.paths):
            return
        try:
            user_id = parse_user(event.user, "user")
        except InvalidArgument:
            log.error("ProfileChanged without a valid user skipped", extra={"msg": delivery.msg_id})
            return
        await self.reschedule(user_id)


def _quiet_end(context: user_context_pb2.UserContext | None, now: datetime) -> datetime | None:
    if context is None:
        return None
    profile = context.profile
    return localtime.quiet_until(
        now, localtime.zone(profile.time_zone), localtime.windows_of(profile)
    )


def _by_channel(rows: list[Any]) -> dict[int, list[Any]]:
    """Tips by the channel chosen for them, in order of first appearance."""
    out: dict[int, list[Any]] = {}
    for row in rows:
        out.setdefault(int(row.channel), []).append(row)
    return out

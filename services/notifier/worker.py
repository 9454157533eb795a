"""The delivery worker: takes due notifications from the queue and delivers them.

Claiming is one short transaction: due rows (``next_attempt_at <= now()``)
are selected ``FOR UPDATE SKIP LOCKED`` (replicas never take the same row)
and their ``next_attempt_at`` moved one lease ahead. Delivery then runs
outside any transaction; its result is written with a guard on the QUEUED
state. A worker that dies mid-delivery leaves its rows to be claimed again
when the lease ends, so nothing queued is lost on a restart (a push may then
be sent twice, which FCM and mail clients tolerate; the alternative, losing
it, is worse).

At delivery the profile is asked again: a consent withdrawn while the
notification waited suppresses it (NO_CONSENT), and quiet hours that began
meanwhile defer it again (or suppress it, per ``notifier_quiet_hours_mode``).

Tips HELD for the daily digest are rows of the same queue: claimed at their
digest time, they are handed to ``Digests.build`` (digests.py), which turns
them into one queued digest notification this loop then delivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta
from typing import Any

import grpc
from google.rpc import status_pb2  # type: ignore[import-untyped]
from sqlalchemy import func, select, update

from kernel import localtime
from kernel.db import Database
from kernel.errors import Unavailable
from kernel.profile_context import user_context
from services.notifier import domain
from services.notifier.clock import Clock, system_clock
from services.notifier.core import devices, notifications
from services.notifier.core.digests import Digests
from services.notifier.fcm import FcmSender, Outcome, message_body
from services.notifier.mail import SmtpSender
from services.notifier.settings import NotifierSettings

log = logging.getLogger(__name__)
n = notifications.n


def _status(code: grpc.StatusCode, message: str) -> bytes:
    return bytes(status_pb2.Status(code=code.value[0], message=message).SerializeToString())


class Worker:
    def __init__(
        self,
        db: Database,
        settings: NotifierSettings,
        registry: devices.Devices,
        push: FcmSender | None,
        mail: SmtpSender | None,
        clock: Clock = system_clock,
    ) -> None:
        self.db = db
        self.settings = settings
        self.registry = registry
        self.push = push
        self.mail = mail
        self.clock = clock
        self.digests = Digests(db, settings, clock, self.wake)
        self._wake = asyncio.Event()
        self.delivered = 0  # notifications finished (any final state), for tests and metrics

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                claimed = await self.claim()
            except Exception as exc:
                log.warning("notification queue not reachable", extra={"error": repr(exc)})
                claimed = []
            if claimed:
                held = {row.user_id for row in claimed if row.state == domain.HELD}
                await asyncio.gather(
                    *(self._deliver_safely(row) for row in claimed if row.state != domain.HELD),
                    *(self._digest_safely(user_id) for user_id in held),
                )
                if len(claimed) >= self.settings.notifier_worker_batch:
                    continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.notifier_worker_poll_seconds):
                    await self._wake.wait()

    async def claim(self) -> list[Any]:
        lease = timedelta(seconds=self.settings.notifier_worker_lease_seconds)
        now = self.clock()
        async with self.db.transaction() as session:
            due = (
                select(n.c.user_id, n.c.notification_id)
                .where(n.c.next_attempt_at <= now, n.c.state.in_((domain.QUEUED, domain.HELD)))
                .order_by(n.c.next_attempt_at)
                .limit(self.settings.notifier_worker_batch)
                .with_for_update(skip_locked=True)
            )
            keys = (await session.execute(due)).all()
            if not keys:
                return []
            rows = await session.execute(
                update(n)
                .where(
                    n.c.user_id.in_({k.user_id for k in keys}),
                    n.c.notification_id.in_([k.notification_id for k in keys]),
                )
                .values(next_attempt_at=now + lease, attempts=n.c.attempts + 1)
                .returning(*n.c)
            )
            return list(rows.all())

    async def _deliver_safely(self, row: Any) -> None:
        try:
            await self.deliver(row)
        except Exception as exc:
            # The lease brings it back; log without contents (no tokens, no addresses).
            log.warning(
                "delivery attempt crashed",
                extra={"notification": row.notification_id, "error": type(exc).__name__},
            )

    async def _digest_safely(self, user_id: str) -> None:
        try:
            await self.digests.build(user_id)
        except Exception as exc:
            # The held tips' lease brings them back.
            log.warning("digest not built", extra={"error": type(exc).__name__})

    async def deliver(self, row: Any) -> None:
        now = self.clock()
        if row.expire_time is not None and row.expire_time <= now:
            await self._finish(
                row,
                domain.FAILED,
                error=_status(grpc.StatusCode.DEADLINE_EXCEEDED, "expired before it could be sent"),
            )
            return
        try:
            context = await user_context(
                self.settings,
                row.user_id,
                rpc_timeout=self.settings.notifier_profile_timeout_seconds,
            )
        except Unavailable:
            await self._retry(row, Outcome("retry", "profile service unavailable"))
            return
        if row.channel not in domain.allowed_channels(context, [row.channel]) or context is None:
            await self._finish(row, domain.SUPPRESSED, reason=domain.NO_CONSENT)
            return
        tz = localtime.zone(context.profile.time_zone)
        quiet_end = localtime.quiet_until(now, tz, localtime.windows_of(context.profile))
        if quiet_end is not None:
            expired = row.expire_time is not None and row.expire_time <= quiet_end
            # A digest always waits: the user asked for it (docs/notifier.md).
            suppress = self.settings.notifier_quiet_hours_mode == "suppress"
            if (suppress and row.kind != domain.DIGEST) or expired:
                await self._finish(row, domain.SUPPRESSED, reason=domain.QUIET_HOURS)
            else:
                await self._reschedule(row, quiet_end, attempts=row.attempts - 1)
            return
        if row.channel == domain.PUSH:
            await self._push(row)
        else:
            await self._email(row, context.profile.email)

    async def _push(self, row: Any) -> None:
        if self.push is None:
            await self._fail(row, grpc.StatusCode.FAILED_PRECONDITION, "push is not configured")
            return
        async with self.db.session() as session:
            targets = [
                t
                for t in await devices.active_rows(session, row.user_id)
                if t.device_id not in row.devices
            ]
        sent: list[str] = []
        retry: Outcome | None = None
        failures: list[str] = []
        ttl = None
        if row.expire_time is not None:
            ttl = max(int((row.expire_time - self.clock()).total_seconds()), 1)
        data = {
            **dict(row.data or {}),
            "notification": domain.notification_name(row.user_id, row.notification_id),
            **({"tip": row.tip} if row.tip else {}),  # a digest carries no single tip
        }
        for target_row in targets:
            target = self.registry.open(target_row)
            outcome = await self.push.send(
                message_body(target.token, row.title, row.body, data, ttl)
            )
            if outcome.kind == "ok":
                sent.append(target.device_id)
            elif outcome.kind == "gone":
                async with self.db.transaction() as session:
                    await devices.remove(session, row.user_id, target.device_id)
                log.info(
                    "device unregistered by the push service, removed",
                    extra={"device": target.device_id, "detail": outcome.detail},
                )
            elif outcome.kind == "retry":
                retry = outcome
            else:
                failures.append(outcome.detail)
        done = [*row.devices, *sent]
        if retry is not None and row.attempts < self.settings.notifier_max_attempts:
            await self._retry(row, retry, devices_done=done)
            return
        if done:
            async with self.db.transaction() as session:
                await devices.mark_pushed(session, row.user_id, sent, self.clock())
            await self._finish(row, domain.SENT, devices_done=done)
            return
        if retry is not None:
            await self._fail(row, grpc.StatusCode.UNAVAILABLE, f"gave up: {retry.detail}")
        elif failures:
            await self._fail(row, grpc.StatusCode.FAILED_PRECONDITION, "; ".join(failures))
        else:
            await self._fail(row, grpc.StatusCode.FAILED_PRECONDITION, "no active device")

    async def _email(self, row: Any, address: str) -> None:
        if self.mail is None:
            await self._fail(row, grpc.StatusCode.FAILED_PRECONDITION, "email is not configured")
            return
        if not address:
            await self._fail(row, grpc.StatusCode.FAILED_PRECONDITION, "no verified email")
            return
        message = self.mail.build(
            address, row.title, row.body, domain.notification_name(row.user_id, row.notification_id)
        )
        outcome = await self.mail.send(message)
        if outcome.kind == "ok":
            await self._finish(row, domain.SENT)
        elif outcome.kind == "retry" and row.attempts < self.settings.notifier_max_attempts:
            await self._retry(row, outcome)
        elif outcome.kind == "retry":
            await self._fail(row, grpc.StatusCode.UNAVAILABLE, f"gave up: {outcome.detail}")
        else:
            await self._fail(row, grpc.StatusCode.FAILED_PRECONDITION, outcome.detail)

    # --- writing results ---------------------------------------------------------------------

    async def _retry(
        self, row: Any, outcome: Outcome, devices_done: list[str] | None = None
    ) -> None:
        s = self.settings
        delay = domain.backoff(
            row.attempts,
            s.notifier_backoff_base_seconds,
            s.notifier_backoff_max_seconds,
            outcome.retry_after,
        )
        log.info(
            "delivery will be retried",
            extra={
                "notification": row.notification_id,
                "attempt": row.attempts,
                "delay": delay,
                "detail": outcome.detail,
            },
        )
        await self._reschedule(
            row, self.clock() + timedelta(seconds=delay), devices_done=devices_done
        )

    async def _reschedule(
        self,
        row: Any,
        when: datetime,
        *,
        attempts: int | None = None,
        devices_done: list[str] | None = None,
    ) -> None:
        values: dict[str, Any] = {"next_attempt_at": when, "update_time": func.now()}
        if attempts is not None:
            values["attempts"] = attempts
        if devices_done is not None:
            values["devices"] = devices_done
        async with self.db.transaction() as session:
            await session.execute(
                update(n)
                .where(
                    n.c.user_id == row.user_id,
                    n.c.notification_id == row.notification_id,
                    n.c.state == domain.QUEUED,
                )
                .values(**values)
            )

    async def _fail(self, row: Any, code: grpc.StatusCode, message: str) -> None:
        log.info(
            "delivery failed",
            extra={"notification": row.notification_id, "code": code.name, "detail": message},
        )
        await self._finish(row, domain.FAILED, error=_status(code, message))

    async def _finish(
        self,
        row: Any,
        state: int,
        *,
        reason: int = 0,
        error: bytes | None = None,
        devices_done: list[str] | None = None,
    ) -> None:
        values: dict[str, Any] = {
            "state": state,
            "suppression_reason": reason,
            "error": error,
            "next_attempt_at": None,
            "update_time": func.now(),
        }
        if state == domain.SENT:
            values["send_time"] = self.clock()
        if devices_done is not None:
            values["devices"] = devices_done
        async with self.db.transaction() as session:
            final = (
                await session.execute(
                    update(n)
                    .where(
                        n.c.user_id == row.user_id,
                        n.c.notification_id == row.notification_id,
                        n.c.state == domain.QUEUED,
                    )
                    .values(**values)
                    .returning(*n.c)
                )
            ).first()
            if final is not None:  # None: erased, or finished by another worker
                await notifications.publish_outcome(session, final)
                if final.kind == domain.DIGEST:  # its tips end as it did
                    await Digests.finish_items(session, final)
        self.delivered += 1

"""The delivery log: rows to protos, reads, and the outcome events (through the outbox)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from google.rpc import status_pb2  # type: ignore[import-untyped]
from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from kernel import paging
from kernel.db import Database
from kernel.errors import InvalidArgument, NotFound
from kernel.ids import random_id
from kernel.names import user_name
from kernel.outbox import enqueue
from kernel.timestamps import datetime_of, timestamp
from services.notifier import domain, store
from tips.notifier.v1 import events_pb2, notification_pb2
from tips.notifier.v1 import notifier_service_pb2 as pb

n = store.notifications
_RESOURCE = "tips.app/Notification"


def new_id() -> str:
    return f"n-{random_id()}"


def to_proto(row: Any) -> notification_pb2.Notification:
    out = notification_pb2.Notification(
        name=domain.notification_name(row.user_id, row.notification_id),
        tip=row.tip,
        title=row.title,
        body=row.body,
        channel=row.channel,
        requested_channels=list(row.requested_channels),
        state=row.state,
        suppression_reason=row.suppression_reason,
        dedupe_key=row.dedupe_key,
        duplicate_of=row.duplicate_of,
        devices=[domain.device_name(row.user_id, x) for x in row.devices],
        data=dict(row.data or {}),
        kind=row.kind,
        digest=domain.notification_name(row.user_id, row.digest_id) if row.digest_id else "",
    )
    if row.error:
        out.error.CopyFrom(status_pb2.Status.FromString(row.error))
    for field in (
        "create_time",
        "not_before_time",
        "expire_time",
        "send_time",
        "deliver_time",
        "update_time",
    ):
        value = getattr(row, field)
        if value is not None:
            getattr(out, field).CopyFrom(timestamp(value))
    return out


async def publish_outcome(session: AsyncSession, row: Any) -> None:
    """Enqueue the event of a final state (SUPPRESSED, SENT, FAILED) in the caller's transaction."""
    notification = to_proto(row)
    event_id = str(uuid.uuid4())
    user = user_name(row.user_id)
    event: Any
    if row.state == domain.SUPPRESSED:
        event = events_pb2.NotificationSuppressed(
            event_id=event_id,
            user=user,
            notification=notification,
            reason=row.suppression_reason,
        )
    elif row.state in (domain.SENT, domain.DELIVERED):
        event = events_pb2.NotificationSent(event_id=event_id, user=user, notification=notification)
    elif row.state == domain.FAILED:
        event = events_pb2.NotificationFailed(
            event_id=event_id, user=user, notification=notification
        )
    else:
        return
    event.occur_time.CopyFrom(timestamp(datetime.now(UTC)))
    # One outcome per notification: the msg id makes a repeat a no-op.
    msg_id = f"notifier/{row.user_id}/{row.notification_id}/{row.state}"
    await enqueue(session, store.outbox, event, msg_id=msg_id)


async def by_request(session: AsyncSession, user_id: str, request_id: str) -> Any:
    if not request_id:
        return None
    found = await session.execute(
        select(n).where(n.c.user_id == user_id, n.c.request_id == request_id)
    )
    return found.first()


async def first_live_with_key(
    session: AsyncSession, user_id: str, key: str, since: datetime
) -> Any:
    found = await session.execute(
        select(n.c.notification_id)
        .where(
            n.c.user_id == user_id,
            n.c.dedupe_key == key,
            n.c.create_time >= since,
            n.c.state.in_(domain.LIVE_STATES),
        )
        .order_by(n.c.create_time)
        .limit(1)
    )
    return found.scalar()


async def live_on_day(session: AsyncSession, user_id: str, day: Any) -> int:
    found = await session.execute(
        select(n.c.notification_id).where(
            n.c.user_id == user_id, n.c.local_day == day, n.c.state.in_(domain.LIVE_STATES)
        )
    )
    return len(found.all())


def _digest_id(user_id: str, name: str) -> str:
    owner, digest_id = domain.NOTIFICATION.parse(name, "digest")
    if owner != user_id:
        raise InvalidArgument([("digest", f"must be a notification of users/{user_id}")])
    return digest_id


class Log:
    """Reads of the delivery log for the public API."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, user_id: str, notification_id: str) -> notification_pb2.Notification:
        async with self.db.session() as session:
            row = (
                await session.execute(
                    select(n).where(n.c.user_id == user_id, n.c.notification_id == notification_id)
                )
            ).first()
        if row is None:
            raise NotFound(
                domain.notification_name(user_id, notification_id), resource_type=_RESOURCE
            )
        return to_proto(row)

    async def list(
        self, user_id: str, request: pb.ListNotificationsRequest, size: int
    ) -> tuple[list[notification_pb2.Notification], str]:
        query = select(n).where(n.c.user_id == user_id)
        if request.states:
            query = query.where(n.c.state.in_([int(s) for s in request.states]))
        if request.channel:
            query = query.where(n.c.channel == int(request.channel))
        if request.tip:
            query = query.where(n.c.tip == request.tip)
        if request.digest:
            query = query.where(n.c.digest_id == _digest_id(user_id, request.digest))
        window = request.create_time_range
        start = datetime_of(window, "start_time", "create_time_range.start_time")
        end = datetime_of(window, "end_time", "create_time_range.end_time")
        if start is not None:
            query = query.where(n.c.create_time >= start)
        if end is not None:
            query = query.where(n.c.create_time < end)
        fingerprint = "|".join(
            (
                user_id,
                ",".join(str(int(s)) for s in request.states),
                str(int(request.channel)),
                request.tip,
                window.SerializeToString(deterministic=True).hex(),
                # Only when set: page tokens issued before the filter existed stay valid.
                *([request.digest] if request.digest else []),
            )
        )
        cursor = paging.decode(request.page_token, fingerprint)
        if cursor is not None:
            query = query.where(
                or_(
                    n.c.create_time < cursor.time,
                    and_(n.c.create_time == cursor.time, n.c.notification_id < cursor.id),
                )
            )
        query = query.order_by(n.c.create_time.desc(), n.c.notification_id.desc()).limit(size + 1)
        async with self.db.session() as session:
            rows = (await session.execute(query)).all()
        next_token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1]
            next_token = paging.encode(
                paging.Cursor(last.create_time, last.notification_id), fingerprint
            )
        return [to_proto(r) for r in rows], next_token

"""The daily digest over gRPC, against real PostgreSQL, NATS, the real profile service
and the FCM / SMTP stand-ins.

The notifier runs on a clock the tests move (``build(runtime, clock=...)``),
so a user's evening comes without waiting for it. "Nothing happened yet" is
never a sleep: an urgent notification to a probe user is sent after the
clock moved, and once it is SENT the worker has claimed everything due at
that time (one query takes queued and held rows alike).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import grpc
import nats
import nats.errors
import nats.js.errors
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2
from google.type import timeofday_pb2

from kernel import localtime
from kernel.db import Database
from kernel.errors import field_violations
from kernel.migrations import migrate
from kernel.server import ServiceServer
from kernel.settings import Settings
from services.notifier.core.digests import Digests
from services.notifier.service import SERVICE as NOTIFIER
from services.notifier.service import build as build_notifier
from tests.support.notifier_stack import (
    NotifierStack,
    md,
    new_user,
    notifier_settings,
    notifier_stack,
)
from tests.support.waiting import eventually
from tips.notifier.v1 import device_pb2, events_pb2, notification_pb2
from tips.notifier.v1 import notifier_service_pb2 as pb
from tips.notifier.v1 import notifier_service_pb2_grpc as pb_grpc
from tips.profile.v1 import profile_pb2
from tips.profile.v1 import profile_service_pb2 as ppb

pytestmark = pytest.mark.integration

T = TypeVar("T")
N = notification_pb2
HELD, QUEUED, SENT = (
    N.NOTIFICATION_STATE_HELD,
    N.NOTIFICATION_STATE_QUEUED,
    N.NOTIFICATION_STATE_SENT,
)
FAILED, DIGEST = N.NOTIFICATION_STATE_FAILED, N.NOTIFICATION_KIND_DIGEST
PUSH, EMAIL = N.NOTIFICATION_CHANNEL_PUSH, N.NOTIFICATION_CHANNEL_EMAIL


class MovableClock:
    """The real clock plus an offset a test sets: time passes, and jumps on demand."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def set(self, when: datetime) -> None:
        self.offset = when - datetime.now(UTC)


Rig = NotifierStack


def _with_clock(clock: MovableClock) -> Any:
    return dataclasses.replace(NOTIFIER, build=functools.partial(build_notifier, clock=clock))


@pytest.fixture(scope="module")
async def rig(
    settings: Settings, create_database: Callable[[], Awaitable[str]]
) -> AsyncIterator[Rig]:
    # Its own database: no other notifier's worker (on another clock) takes these rows.
    own = settings.model_copy(update={"database_url": await create_database()})
    clock = MovableClock()
    async with notifier_stack(own, definition=_with_clock(clock), clock=clock) as stack:
        yield stack


# --- helpers -------------------------------------------------------------------------------


_md = md


def _ts(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


async def _bad(
    call: Awaitable[Any], code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
) -> dict[str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call
    assert failed.value.code() == code, failed.value.details()
    return field_violations(failed.value)


def _digest(hours: int, minutes: int = 0) -> profile_pb2.NotificationDigest:
    return profile_pb2.NotificationDigest(
        enabled=True, delivery_time=timeofday_pb2.TimeOfDay(hours=hours, minutes=minutes)
    )


async def _update(r: Rig, user: str, profile: profile_pb2.Profile, *paths: str) -> Any:
    profile.name = f"users/{user}/profile"
    return (
        await r.profile.UpdateProfile(
            ppb.UpdateProfileRequest(
                profile=profile, update_mask=field_mask_pb2.FieldMask(paths=list(paths))
            ),
            metadata=_md(user),
        )
    ).profile


async def _setup(
    r: Rig,
    zone: str,
    digest: profile_pb2.NotificationDigest | None,
    *,
    email: bool = False,
    quiet: list[profile_pb2.QuietHoursWindow] | None = None,
    cap: int = 0,
) -> tuple[str, str]:
    """A consenting user in ``zone`` with the digest given; (user, push token or '')."""
    user = await new_user(
        r, zone=zone, push=not email, email=email, quiet=quiet, cap=cap, digest=digest
    )
    token = ""
    if not email:
        token = f"fcm-{secrets.token_urlsafe(32)}"
        await r.api.CreateDevice(
            pb.CreateDeviceRequest(
                parent=f"users/{user}",
                device=device_pb2.Device(
                    push_token=token, platform=device_pb2.DEVICE_PLATFORM_ANDROID
                ),
            ),
            metadata=_md(user),
        )
    return user, token


async def _send(r: Rig, user: str, tip: str, **fields: Any) -> N.Notification:
    request = pb.SendNotificationRequest(
        parent=f"users/{user}",
        tip=f"users/{user}/tips/{tip}",
        title=f"Title {tip}",
        body=f"Body of {tip}.",
        **fields,
    )
    response = await r.internal.SendNotification(request, timeout=10)
    assert not response.suppressed, response
    found: N.Notification = response.notification
    return found


async def _get(r: Rig, user: str, name: str) -> N.Notification:
    found: N.Notification = (
        await r.api.GetNotification(pb.GetNotificationRequest(name=name), metadata=_md(user))
    ).notification
    return found


async def _states(r: Rig, user: str, names: list[str]) -> list[int]:
    return [(await _get(r, user, name)).state for name in names]


def _pushes(r: Rig, token: str) -> list[dict[str, Any]]:
    return [body["message"] for _, _, body in r.fcm.sends if body["message"].get("token") == token]


async def _barrier(r: Rig, probe: tuple[str, str]) -> None:
    """Returns once the worker ran a claim that started after this call (see the module doc)."""
    user, _ = probe
    sent = await _send(r, user, f"probe-{secrets.token_hex(4)}", urgent=True)
    await eventually(lambda: _get(r, user, sent.name), lambda x: x.state == SENT)


async def _sent_events(r: Rig) -> set[str]:
    nc = await nats.connect(r.nats_url, connect_timeout=2, max_reconnect_attempts=1)
    try:
        sub = await nc.jetstream().pull_subscribe(
            "tips.notifier.v1.notification_sent", stream="TIPS_NOTIFIER"
        )
        names: set[str] = set()
        with contextlib.suppress(nats.errors.TimeoutError):
            while True:
                for msg in await sub.fetch(500, timeout=0.5):
                    names.add(events_pb2.NotificationSent.FromString(msg.data).notification.name)
                    await msg.ack()
        await sub.unsubscribe()
        return names
    finally:
        await nc.close()


# --- the digest ------------------------------------------------------------------------------


async def test_held_tips_go_out_in_one_digest_at_the_users_local_time(rig: Rig) -> None:
    r = rig
    r.clock.set(_utc("2026-12-01 09:00"))  # 18:00 in Tokyo
    user, token = await _setup(r, "Asia/Tokyo", _digest(20))
    probe = await _setup(r, "UTC", None)
    due = _utc("2026-12-01 11:00")  # 20:00 in Tokyo
    held = [await _send(r, user, f"t{i}") for i in range(3)]
    for item in held:
        assert item.state == HELD and item.digest == "" and item.kind == N.NOTIFICATION_KIND_TIP
        assert item.not_before_time.ToDatetime(UTC) == due
    # Urgent: delivered on its own at once, digest or not.
    urgent = await _send(r, user, "urgent", urgent=True)
    assert urgent.state == QUEUED
    await eventually(lambda: _get(r, user, urgent.name), lambda x: x.state == SENT)

    r.clock.set(due - timedelta(minutes=1))
    await _barrier(r, probe)
    assert await _states(r, user, [h.name for h in held]) == [HELD] * 3
    assert [m["notification"]["title"] for m in _pushes(r, token)] == ["Title urgent"]

    r.clock.set(due)
    await eventually(lambda: _states(r, user, [h.name for h in held]), lambda s: s == [SENT] * 3)
    items = [await _get(r, user, h.name) for h in held]
    digest_name = items[0].digest
    assert digest_name and all(i.digest == digest_name for i in items)
    digest = await _get(r, user, digest_name)
    assert digest.kind == DIGEST and digest.state == SENT and digest.tip == ""
    assert digest.send_time.ToDatetime(UTC) >= due
    assert digest.title == "Your daily tips: 3 tips"
    for i in range(3):
        assert f"Title t{i}: Body of t{i}." in digest.body
    assert all(
        i.send_time == digest.send_time and list(i.devices) == list(digest.devices) for i in items
    )
    pushes = _pushes(r, token)
    assert len(pushes) == 2  # the urgent one and ONE digest
    assert pushes[1]["notification"] == {"title": digest.title, "body": digest.body}
    assert pushes[1]["data"] == {"notification": digest_name, "kind": "digest"}

    # The log: the digest among the user's notifications, its tips by filter.
    listed = await r.api.ListNotifications(
        pb.ListNotificationsRequest(parent=f"users/{user}", digest=digest_name), metadata=_md(user)
    )
    assert sorted(n.name for n in listed.notifications) == sorted(h.name for h in held)
    everything = await r.api.ListNotifications(
        pb.ListNotificationsRequest(parent=f"users/{user}"), metadata=_md(user)
    )
    assert [n.kind for n in everything.notifications].count(DIGEST) == 1
    # Each tip's outcome is an event, as for tips sent on their own.
    await eventually(lambda: _sent_events(r), lambda names: {h.name for h in held} <= names)

    # Sent once: after more claims, still one digest push.
    await _barrier(r, probe)
    assert len(_pushes(r, token)) == 2

    # Ownership: another user sees neither the digest nor its tips.
    mallory = f"u_{secrets.token_hex(5)}"
    denied = grpc.StatusCode.PERMISSION_DENIED
    await _bad(
        r.api.GetNotification(pb.GetNotificationRequest(name=digest_name), metadata=_md(mallory)),
        denied,
    )
    await _bad(
        r.api.ListNotifications(
            pb.ListNotificationsRequest(parent=f"users/{user}", digest=digest_name),
            metadata=_md(mallory),
        ),
        denied,
    )
    assert "digest" in await _bad(
        r.api.ListNotifications(
            pb.ListNotificationsRequest(parent=f"users/{mallory}", digest=digest_name),
            metadata=_md(mallory),
        )
    )
    assert "digest" in await _bad(
        r.api.ListNotifications(
            pb.ListNotificationsRequest(parent=f"users/{user}", digest="users/x/tips/y"),
            metadata=_md(user),
        )
    )


async def test_quiet_hours_defer_the_digest_and_expired_tips_are_left_out(rig: Rig) -> None:
    r = rig
    # New York, Friday 2026-12-04: digest at 21:00, quiet 20:30-22:15; by email.
    quiet = profile_pb2.QuietHoursWindow(
        day_of_week=5,  # type: ignore[arg-type]
        start_time_of_day=timeofday_pb2.TimeOfDay(hours=20, minutes=30),
        end_time_of_day=timeofday_pb2.TimeOfDay(hours=22, minutes=15),
    )
    r.clock.set(_utc("2026-12-04 20:00"))  # 15:00 EST
    user, _ = await _setup(r, "America/New_York", _digest(21), email=True, quiet=[quiet])
    probe = await _setup(r, "UTC", None)
    due, quiet_end = _utc("2026-12-05 02:00"), _utc("2026-12-05 03:15")
    keeps = await _send(r, user, "keeps", channels=[EMAIL])
    stale = await _send(
        r, user, "stale", channels=[EMAIL], expire_time=_ts(due + timedelta(minutes=30))
    )
    assert keeps.state == stale.state == HELD and keeps.channel == EMAIL
    assert keeps.not_before_time.ToDatetime(UTC) == due

    r.clock.set(due)  # 21:00, inside quiet hours: the digest waits for 22:15
    await eventually(
        lambda: _get(r, user, keeps.name),
        lambda x: x.state == HELD and x.not_before_time.ToDatetime(UTC) == quiet_end,
    )
    await _barrier(r, probe)
    assert not [m for rcpts, m in r.smtp.inbox if rcpts == [f"{user}@example.com"]]

    r.clock.set(quiet_end)
    final = await eventually(lambda: _get(r, user, keeps.name), lambda x: x.state == SENT)
    dropped = await _get(r, user, stale.name)
    assert dropped.state == FAILED and dropped.digest == ""
    assert dropped.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    digest = await _get(r, user, final.digest)
    assert digest.channel == EMAIL and digest.title == "Your daily tips: 1 tip"
    assert "Title keeps" in digest.body and "stale" not in digest.body
    assert digest.send_time.ToDatetime(UTC) >= quiet_end
    mails = [m for rcpts, m in r.smtp.inbox if rcpts == [f"{user}@example.com"]]
    assert len(mails) == 1 and mails[0]["Subject"] == digest.title
    assert str(mails[0]["X-Tips-Notification"]).strip() == digest.name
    assert "Body of keeps." in mails[0].get_content()  # type: ignore[attr-defined]


async def test_digest_time_across_both_dst_transitions(rig: Rig) -> None:
    r = rig
    r.clock.set(_utc("2027-03-27 12:00"))  # Saturday; Madrid springs forward on the 28th
    user, token = await _setup(r, "Europe/Madrid", _digest(2, 30))
    probe = await _setup(r, "UTC", None)
    spring = await _send(r, user, "spring")
    # 02:30 does not exist on the 28th: 03:30 CEST.
    assert spring.not_before_time.ToDatetime(UTC) == _utc("2027-03-28 01:30")
    r.clock.set(_utc("2027-03-28 01:29"))
    await _barrier(r, probe)
    assert (await _get(r, user, spring.name)).state == HELD
    r.clock.set(_utc("2027-03-28 01:30"))
    await eventually(lambda: _get(r, user, spring.name), lambda x: x.state == SENT)
    local = (
        (await _get(r, user, spring.name))
        .send_time.ToDatetime(UTC)
        .astimezone(localtime.zone("Europe/Madrid"))
    )
    assert (local.date(), local.hour, local.minute) == (date(2027, 3, 28), 3, 30)

    r.clock.set(_utc("2027-10-30 12:00"))  # Saturday; Madrid falls back on the 31st
    first = await _send(r, user, "autumn")
    assert first.not_before_time.ToDatetime(UTC) == _utc("2027-10-31 00:30")  # the first 02:30
    r.clock.set(_utc("2027-10-31 00:30"))
    await eventually(lambda: _get(r, user, first.name), lambda x: x.state == SENT)
    # Held during the repeated hour: the next digest is Monday's, not the second 02:30.
    r.clock.set(_utc("2027-10-31 00:45"))
    later = await _send(r, user, "after")
    assert later.not_before_time.ToDatetime(UTC) == _utc("2027-11-01 01:30")
    r.clock.set(_utc("2027-10-31 01:31"))
    await _barrier(r, probe)
    assert (await _get(r, user, later.name)).state == HELD
    assert len([m for m in _pushes(r, token) if m["data"].get("kind") == "digest"]) == 2


async def test_changing_the_time_moves_and_turning_off_releases_held_tips(rig: Rig) -> None:
    r = rig
    r.clock.set(_utc("2026-12-02 12:00"))  # 13:00 in Madrid
    user, token = await _setup(r, "Europe/Madrid", _digest(21))
    held = [await _send(r, user, f"m{i}") for i in range(2)]
    assert all(h.not_before_time.ToDatetime(UTC) == _utc("2026-12-02 20:00") for h in held)

    # Another delivery time: the held tips move (ProfileChanged -> reschedule).
    await _update(r, user, profile_pb2.Profile(digest=_digest(19)), "digest.delivery_time")
    await eventually(
        lambda: _get(r, user, held[0].name),
        lambda x: x.not_before_time.ToDatetime(UTC) == _utc("2026-12-02 18:00"),
    )
    # Another zone moves them too: 19:00 in Tokyo is 10:00Z tomorrow.
    await _update(r, user, profile_pb2.Profile(time_zone="Asia/Tokyo"), "time_zone")
    await eventually(
        lambda: _get(r, user, held[1].name),
        lambda x: x.not_before_time.ToDatetime(UTC) == _utc("2026-12-03 10:00"),
    )

    # Off: what is held goes out now, in one last digest; new tips go on their own.
    off = profile_pb2.Profile(digest=profile_pb2.NotificationDigest(enabled=False))
    await _update(r, user, off, "digest.enabled")
    await eventually(lambda: _states(r, user, [h.name for h in held]), lambda s: s == [SENT] * 2)
    carried = {(await _get(r, user, h.name)).digest for h in held}
    assert len(carried) == 1 and "" not in carried
    alone = await _send(r, user, "alone")
    assert alone.state == QUEUED
    await eventually(lambda: _get(r, user, alone.name), lambda x: x.state == SENT)
    titles = [m["notification"]["title"] for m in _pushes(r, token)]
    assert titles == ["Your daily tips: 2 tips", "Title alone"]

    # Erasure takes the digest rows too.
    rows = "SELECT count(*) FROM notifier.notifications WHERE user_id = $1"
    assert await r.db.fetchval(rows + " AND kind = 2", user) == 1
    await r.profile.DeleteUser(ppb.DeleteUserRequest(name=f"users/{user}"), metadata=_md(user))
    await eventually(lambda: r.db.fetchval(rows, user), lambda count: count == 0)


async def test_held_tips_count_against_the_daily_cap_and_dedupe(rig: Rig) -> None:
    r = rig
    r.clock.set(_utc("2026-12-03 08:00"))
    user, _ = await _setup(r, "UTC", _digest(20), cap=2)
    assert (await _send(r, user, "c1")).state == HELD
    dup = await r.internal.SendNotification(
        pb.SendNotificationRequest(
            parent=f"users/{user}", tip=f"users/{user}/tips/c1", title="T", body="B"
        ),
        timeout=10,
    )
    assert dup.suppression_reason == N.SUPPRESSION_REASON_DUPLICATE
    assert (await _send(r, user, "c2")).state == HELD
    third = await r.internal.SendNotification(
        pb.SendNotificationRequest(
            parent=f"users/{user}", tip=f"users/{user}/tips/c3", title="T", body="B"
        ),
        timeout=10,
    )
    assert third.suppression_reason == N.SUPPRESSION_REASON_FREQUENCY_CAP


async def test_digest_settings_validated_stored_and_carried(rig: Rig) -> None:
    r = rig
    user = f"u_{secrets.token_hex(5)}"
    bad_time = profile_pb2.Profile(
        digest=profile_pb2.NotificationDigest(
            enabled=True, delivery_time=timeofday_pb2.TimeOfDay(hours=24, minutes=30)
        )
    )
    field = "profile.digest.delivery_time"
    assert field in await _bad(_update(r, user, bad_time, "digest"))
    no_time = profile_pb2.Profile(digest=profile_pb2.NotificationDigest(enabled=True))
    assert field in await _bad(_update(r, user, no_time, "digest"))
    assert "update_mask.paths[0]" in await _bad(_update(r, user, no_time, "digest.when"))
    saved = await _update(r, user, profile_pb2.Profile(digest=_digest(7, 45)), "digest")
    assert saved.digest.enabled and saved.digest.delivery_time.minutes == 45
    got = await r.profile.GetProfile(
        ppb.GetProfileRequest(name=f"users/{user}/profile"), metadata=_md(user)
    )
    assert got.profile.digest == saved.digest
    context = await r.profile_internal.GetUserContext(
        ppb.GetUserContextRequest(user=f"users/{user}")
    )
    assert context.user_context.profile.digest == saved.digest


async def test_a_crash_between_building_and_sending_neither_loses_nor_duplicates(
    rig: Rig, settings: Settings, create_database: Callable[[], Awaitable[str]]
) -> None:
    r = rig
    # A second notifier on a database of its own, its worker off: nothing is
    # built or sent unless this test does it.
    own = settings.model_copy(
        update={"database_url": await create_database(), "profile_addr": r.settings.profile_addr}
    )
    await migrate(own, [NOTIFIER])
    clock = MovableClock()
    clock.set(_utc("2026-12-04 07:00"))
    fcm_url = r.settings.notifier_fcm_base_url
    idle_settings = notifier_settings(own, fcm_url, r.fcm, notifier_worker_enabled=False)
    user, _ = await _setup(r, "UTC", _digest(8))
    token = f"fcm-{secrets.token_urlsafe(32)}"
    idle = ServiceServer(_with_clock(clock), idle_settings, port=0)
    await idle.start()
    db = await Database.connect(own, "notifier")
    try:
        async with grpc.aio.insecure_channel(idle.address) as channel:
            await pb_grpc.NotifierServiceStub(channel).CreateDevice(
                pb.CreateDeviceRequest(
                    parent=f"users/{user}",
                    device=device_pb2.Device(
                        push_token=token, platform=device_pb2.DEVICE_PLATFORM_ANDROID
                    ),
                ),
                metadata=_md(user),
            )
            internal = pb_grpc.NotifierInternalServiceStub(channel)
            held = [
                (
                    await internal.SendNotification(
                        pb.SendNotificationRequest(
                            parent=f"users/{user}",
                            tip=f"users/{user}/tips/x{i}",
                            title=f"X{i}",
                            body="b",
                        ),
                        timeout=10,
                    )
                ).notification.name
                for i in range(2)
            ]
        clock.set(_utc("2026-12-04 08:00"))
        # Two workers build at once (the first then "crashes" before sending).
        woken: list[int] = []
        digests = Digests(db, idle_settings, clock, lambda: woken.append(1))
        built = await asyncio.gather(digests.build(user), digests.build(user))
        assert sorted(len(b) for b in built) == [0, 1] and woken == [1]
        assert await digests.build(user) == []  # and again: nothing left to build
    finally:
        await db.close()
        await idle.stop(grace=0)
    assert not _pushes(r, token)

    worker = ServiceServer(_with_clock(clock), notifier_settings(own, fcm_url, r.fcm), port=0)
    await worker.start()
    try:
        async with grpc.aio.insecure_channel(worker.address) as channel:
            stub = pb_grpc.NotifierServiceStub(channel)

            async def states() -> list[int]:
                return [
                    (
                        await stub.GetNotification(
                            pb.GetNotificationRequest(name=name), metadata=_md(user)
                        )
                    ).notification.state
                    for name in held
                ]

            await eventually(states, lambda s: s == [SENT, SENT])
    finally:
        await worker.stop(grace=0)
    pushes = _pushes(r, token)
    assert len(pushes) == 1 and pushes[0]["notification"]["title"] == "Your daily tips: 2 tips"

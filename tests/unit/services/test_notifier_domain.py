"""services.notifier.domain and kernel.crypto: channels, checks, sealing.

Quiet hours and local days: tests/unit/kernel/test_kernel_localtime.py.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kernel.crypto import CryptoError, KeyRing, decode_key
from kernel.errors import InvalidArgument
from services.notifier import domain
from services.notifier.fcm import message_body
from tips.notifier.v1 import notifier_service_pb2 as pb
from tips.profile.v1 import consent_pb2, profile_pb2, user_context_pb2

pytestmark = pytest.mark.unit


def _context(push: bool, email: bool, *purposes: int) -> user_context_pb2.UserContext:
    return user_context_pb2.UserContext(
        profile=profile_pb2.Profile(
            channels=profile_pb2.NotificationChannels(push_enabled=push, email_enabled=email),
            email="a@example.com",
        ),
        granted_purposes=list(purposes),  # type: ignore[arg-type]
    )


def test_channels_need_consent_and_the_profile_switch() -> None:
    push_consent = consent_pb2.CONSENT_PURPOSE_PUSH_NOTIFICATIONS
    email_consent = consent_pb2.CONSENT_PURPOSE_EMAIL_NOTIFICATIONS
    wanted = [domain.PUSH, domain.EMAIL]
    assert domain.allowed_channels(None, wanted) == []
    assert domain.allowed_channels(_context(True, True), wanted) == []
    assert domain.allowed_channels(_context(False, True, push_consent, email_consent), wanted) == [
        domain.EMAIL
    ]
    allowed = domain.allowed_channels(_context(True, True, push_consent, email_consent), wanted)
    assert domain.choose_channel(allowed, domain.Reach(False, "a@example.com")) == domain.EMAIL
    assert domain.choose_channel(allowed, domain.Reach(True, "")) == domain.PUSH
    assert domain.choose_channel(allowed, domain.Reach(False, "")) is None


def test_send_checks_name_every_bad_field() -> None:
    now = datetime(2026, 11, 30, tzinfo=UTC)
    with pytest.raises(InvalidArgument) as bad:
        domain.check_send(
            pb.SendNotificationRequest(
                parent="users/u1",
                tip="users/u2/tips/t",
                body="b" * 501,
                channels=[0],  # type: ignore[list-item]
                data={"google.x": "1"},
            ),
            now,
        )
    fields = {f for f, _ in bad.value.violations}
    assert fields == {"tip", "title", "body", "channels[0]", "data['google.x']"}
    ok = domain.check_send(
        pb.SendNotificationRequest(parent="users/u1", tip="users/u1/tips/t", title="T", body="B"),
        now,
    )
    assert ok.channels == (domain.PUSH,) and ok.dedupe_key == "users/u1/tips/t"


def test_backoff_grows_caps_and_honours_retry_after() -> None:
    assert [domain.backoff(a, 1.0, 10.0) for a in (1, 2, 3, 5)] == [1.0, 2.0, 4.0, 10.0]
    assert domain.backoff(1, 1.0, 10.0, retry_after=7) == 7.0
    assert domain.backoff(1, 1.0, 10.0, retry_after=999) == 10.0


def test_fcm_message_has_the_documented_shape() -> None:
    body = message_body("tok", "T", "B", {"k": "v"}, ttl_seconds=60)
    message = body["message"]
    assert (message["token"], message["notification"]) == ("tok", {"title": "T", "body": "B"})
    assert message["android"] == {"ttl": "60s"} and message["data"] == {"k": "v"}
    assert "android" not in message_body("tok", "T", "B", {}, None)["message"]


def test_key_ring_seals_bound_to_context_and_rewraps() -> None:
    ring = KeyRing({"a": b"\x01" * 32, "b": b"\x02" * 32}, "a")
    sealed = ring.seal("tips-notifier/users/u1/devices/d1", b"push-token")
    assert b"push-token" not in sealed.ciphertext + sealed.wrapped_key
    assert ring.open("tips-notifier/users/u1/devices/d1", sealed) == b"push-token"
    with pytest.raises(CryptoError):
        ring.open("tips-notifier/users/u2/devices/d1", sealed)
    moved = ring.rewrap("tips-notifier/users/u1/devices/d1", sealed, "b")
    assert moved.key_id == "b" and moved.ciphertext == sealed.ciphertext
    assert ring.open("tips-notifier/users/u1/devices/d1", moved) == b"push-token"
    assert len(decode_key("A" * 43)) == 32
    with pytest.raises(CryptoError):
        decode_key("short")
    with pytest.raises(CryptoError):
        KeyRing({"a": b"\x01" * 32}, "missing")

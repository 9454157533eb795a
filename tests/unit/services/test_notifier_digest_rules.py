"""services.notifier.digest_rules: when a held tip's digest is due, and the digest's text."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from google.type import timeofday_pb2

from services.notifier import digest_rules, domain
from services.notifier.digest_rules import Item
from services.notifier.fcm import message_body
from tips.profile.v1 import profile_pb2

pytestmark = pytest.mark.unit


def _profile(
    zone: str, hours: int | None, minutes: int = 0, enabled: bool = True
) -> profile_pb2.Profile:
    digest = profile_pb2.NotificationDigest(enabled=enabled)
    if hours is not None:
        digest.delivery_time.CopyFrom(timeofday_pb2.TimeOfDay(hours=hours, minutes=minutes))
    return profile_pb2.Profile(time_zone=zone, digest=digest)


def test_due_at_the_next_local_delivery_time_or_none_when_off() -> None:
    at = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    assert digest_rules.due(at, _profile("Asia/Tokyo", 20)) == datetime(2026, 12, 1, 11, tzinfo=UTC)
    assert digest_rules.due(at, _profile("Asia/Tokyo", 18)) == datetime(2026, 12, 2, 9, tzinfo=UTC)
    assert digest_rules.due(at, _profile("Asia/Tokyo", 20, enabled=False)) is None
    assert digest_rules.due(at, _profile("Asia/Tokyo", None)) is None  # on, but no time
    assert digest_rules.due(at, profile_pb2.Profile()) is None
    # Madrid's spring day: 02:30 does not exist, the digest goes at 03:30 CEST.
    saturday = datetime(2026, 3, 28, 12, tzinfo=UTC)
    spring = digest_rules.due(saturday, _profile("Europe/Madrid", 2, 30))
    assert spring == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)


def test_text_lists_every_tip_with_title_and_body() -> None:
    one = digest_rules.text([Item("Walk", "Ten minutes outside.")], domain.PUSH)
    assert one == ("Your daily tips: 1 tip", "\N{BULLET} Walk: Ten minutes outside.")
    title, body = digest_rules.text([Item("A", "a."), Item("B", "b.")], domain.EMAIL)
    assert title == "Your daily tips: 2 tips" and body == "A\na.\n\nB\nb."


def test_text_stays_within_the_channel_size_and_counts_the_rest() -> None:
    items = [Item(f"Tip {i} " + "t" * 90, "b" * 500) for i in range(20)]
    title, body = digest_rules.text(items, domain.PUSH)
    assert len(body.encode()) <= digest_rules.PUSH_BODY_BYTES
    listed = body.count("\N{BULLET}")
    assert 1 <= listed < 20
    assert body.endswith(f"\N{HORIZONTAL ELLIPSIS}and {20 - listed} more in the app")
    # The push with that text fits FCM's 4096-byte message limit.
    data = {"notification": "users/u_123456789/notifications/n-" + "0" * 32, "kind": "digest"}
    message = message_body("f" * 200, title, body, data, ttl_seconds=None)
    assert len(json.dumps(message, ensure_ascii=False).encode()) < 4096
    # Email has room for all of them.
    _, mail = digest_rules.text(items, domain.EMAIL)
    assert mail.count("Tip ") == 20 and "more in the app" not in mail


def test_a_single_tip_too_long_for_a_push_is_cut_on_a_character() -> None:
    huge = Item("\N{EURO SIGN}" * 100, "\N{SMILING FACE WITH SMILING EYES}" * 500)  # 2300 B
    _, body = digest_rules.text([huge], domain.PUSH)
    assert len(body.encode()) <= digest_rules.PUSH_BODY_BYTES
    assert body.endswith("\N{HORIZONTAL ELLIPSIS}") and body.encode().decode() == body
    _, two = digest_rules.text([huge, Item("Next", "n")], domain.PUSH)
    assert len(two.encode()) <= digest_rules.PUSH_BODY_BYTES
    assert two.endswith("and 1 more in the app")

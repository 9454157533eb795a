"""``afternoon_zone`` puts a user in the afternoon day part whenever it is called, so
tests and ``tips bench decision`` meet the same eligibility at any hour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from policy.features import day_part
from tipsmesh.clock import afternoon_zone


def test_the_zone_is_in_the_afternoon_at_every_hour() -> None:
    start = datetime(2026, 12, 7, tzinfo=UTC)
    for minutes in range(0, 24 * 60, 7):
        now = start + timedelta(minutes=minutes)
        local = now.astimezone(ZoneInfo(afternoon_zone(now)))
        assert local.hour == 14 and day_part(local.hour + local.minute / 60) == "afternoon", now

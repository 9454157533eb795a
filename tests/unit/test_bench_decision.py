"""``tips bench decision`` gives its users a zone where it is early afternoon, so a
run at any hour meets the same eligibility (day parts, the local day's caps)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from bench.support.clock import daytime_zone


def test_users_are_in_the_early_afternoon_whenever_the_bench_runs() -> None:
    start = datetime(2026, 12, 7, tzinfo=UTC)
    for minutes in range(0, 24 * 60, 7):
        now = start + timedelta(minutes=minutes)
        local = now.astimezone(ZoneInfo(daytime_zone(now)))
        assert 12.5 <= local.hour + local.minute / 60 <= 13.5, (now, daytime_zone(now))

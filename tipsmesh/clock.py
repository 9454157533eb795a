"""Time-of-day independence for tests and benches that need tips of a given day part.

Catalog tips are offered only in their day parts (morning, afternoon, ...) of
the user's local time, so a test that expects a step or sleep tip gives its
user a zone where it is mid-afternoon now, whenever the suite runs; and
``tips bench decision`` gives its users one (at 22:15 UTC, with its users on
UTC, two thirds of its calls came back empty under night-time eligibility).
"""

from __future__ import annotations

from datetime import UTC, datetime


def afternoon_zone(now: datetime | None = None) -> str:
    """An IANA zone whose local hour is 14 now: the middle of the afternoon day part."""
    hour = (now or datetime.now(UTC)).astimezone(UTC).hour
    offset = 14 - hour  # 14..-9, within Etc/GMT's -12..+14
    if offset == 0:
        return "Etc/UTC"
    # POSIX sign: Etc/GMT-3 is UTC+3.
    return f"Etc/GMT-{offset}" if offset > 0 else f"Etc/GMT+{-offset}"

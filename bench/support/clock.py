"""The benches' clock helpers. Pure."""

from __future__ import annotations

from datetime import datetime


def daytime_zone(now: datetime, hour: float = 13.0) -> str:
    """A fixed-offset IANA zone in which ``now`` is about ``hour`` o'clock.

    Eligibility follows the user's local time (day parts, the local day's
    caps); a bench run at 22:15 UTC with users on UTC met night-time
    eligibility, few tips per user, and two thirds of its calls came back
    empty. ``Etc/GMT-N`` is UTC+N (POSIX signs)."""
    offset = round(hour - (now.hour + now.minute / 60)) % 24
    offset = offset - 24 if offset > 12 else offset  # UTC-11 .. UTC+12
    return "UTC" if offset == 0 else f"Etc/GMT{-offset:+d}"

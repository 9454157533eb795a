"""The user's local time: zones, local days, daily times and weekly quiet windows. Pure.

Every rule that reads a wall clock in the user's IANA zone lives here, so the
services agree across both DST transitions. Everything is computed on UTC
instants; a naive wall-clock time is only ever turned into an instant by
``to_utc``, which states what happens to the times a transition skips or
repeats:

- **skipped** (spring forward, e.g. 02:30 in Europe/Madrid on the last Sunday
  of March): the time moves forward by the gap, so 02:30 is 03:30 CEST
  (PEP 495's ``fold=0``; RFC 5545 and cron do the same);
- **repeated** (fall back, e.g. 02:30 on the last Sunday of October): the
  first occurrence (CEST), or with ``latest=True`` the second one (CET).

**Quiet windows.** A window is a span of local wall-clock time that starts on
a weekday (``end <= start`` runs past midnight into the next day; 24:00 ends
at the next midnight). In real time one occurrence covers the instants from
``to_utc(start)`` (its first occurrence) up to, excluding,
``to_utc(end, latest=True)`` (its last occurrence). So:

- in the repeated hour an instant is quiet whenever its wall time, in either
  pass, is inside the window, and a window never has a hole (02:15-02:45 on
  the autumn day is quiet from the first 02:15 to the second 02:45: the clock
  shows a quiet time at both ends of that span);
- a start or end the spring gap skips moves forward by the gap, like any
  other time (02:15-02:45 on the spring day is quiet 03:15-03:45 CEST; a
  window of exactly the missing hour is empty);
- ``quiet_until(t)`` is None or strictly after ``t``, and the local time of
  the instant it returns is the end of the last window of the chain (or that
  end moved forward by a gap).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from google.type import timeofday_pb2

from tips.profile.v1 import profile_pb2

__all__ = [
    "SECONDS_PER_DAY",
    "QuietWindow",
    "in_quiet_hours",
    "local_day",
    "local_midnight",
    "next_time_of_day",
    "quiet_until",
    "to_utc",
    "windows_of",
    "zone",
]

SECONDS_PER_DAY = 24 * 3600
# Occurrences anchored this many local days around an instant can contain it
# (a window lasts at most a day; a transition at midnight can make local
# dates repeat or skip).
_ANCHORS = (-2, -1, 0, 1)


def zone(name: str) -> tzinfo:
    """The IANA zone ``name``; UTC when empty or unknown (profiles are validated upstream)."""
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "America" is a directory
        return UTC


def _aware(when: datetime) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("a timezone-aware datetime is needed (a naive one is ambiguous)")
    return when.astimezone(UTC)


def to_utc(day: date, second: int, tz: tzinfo, *, latest: bool = False) -> datetime:
    """The UTC instant of wall-clock time ``second`` (seconds after midnight, up
    to 86400 = the next midnight) on local date ``day`` in ``tz``.

    A time skipped by a forward transition moves forward by the gap (02:30 on
    Madrid's spring day is 03:30 CEST). A time repeated by a backward
    transition is its first occurrence, or its last with ``latest=True``.
    """
    return _to_utc(day, second, tz, latest)


# Pure, and asked again and again for the same few days (every decision of a
# user asks for this week's windows): cached, seven windows cost 4 us, not 18.
@functools.lru_cache(maxsize=16384)
def _to_utc(day: date, second: int, tz: tzinfo, latest: bool) -> datetime:
    naive = datetime.combine(day, time()) + timedelta(seconds=second)
    early = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
    late = naive.replace(tzinfo=tz, fold=1).astimezone(UTC)
    if early <= late:  # equal: an ordinary time; less: repeated (fold 0 is the first pass)
        return late if latest else early
    # Skipped: fold=0 applies the offset from before the gap, which lands the
    # gap's length later - forward by the gap.
    return early


def local_day(when: datetime, tz: tzinfo) -> date:
    """The user's calendar date at instant ``when``."""
    return _aware(when).astimezone(tz).date()


def local_midnight(day: date | datetime, tz: tzinfo) -> datetime:
    """The first instant (UTC) of a local day: ``day`` itself, or the local day of an instant.

    Where a transition skips midnight the day starts when the clock resumes.
    """
    if isinstance(day, datetime):
        day = local_day(day, tz)
    return to_utc(day, 0, tz)


def next_time_of_day(after: datetime, tz: tzinfo, second: int) -> datetime:
    """The first instant at or after ``after`` whose local time is ``second`` after
    midnight, once per local day: a skipped time counts moved forward by the
    gap, a repeated time only at its first occurrence."""
    start = _aware(after)
    today = local_day(start, tz)
    for days in range(-1, 3):
        found = to_utc(today + timedelta(days=days), second, tz)
        if found >= start:
            return found
    raise AssertionError("unreachable: every local day has the time")  # pragma: no cover


# --- quiet windows -------------------------------------------------------------------------


@dataclass(frozen=True)
class QuietWindow:
    """A weekly window of local wall-clock time; ``end_second <= start_second`` runs
    past midnight into the next day."""

    day: int  # ISO weekday of its start, 1 = Monday .. 7 = Sunday (google.type.DayOfWeek)
    start_second: int  # after local midnight, 0..86399
    end_second: int  # after local midnight, 0..86400 (24:00)


def _seconds(t: timeofday_pb2.TimeOfDay) -> int:
    return int(t.hours * 3600 + t.minutes * 60 + t.seconds)


def windows_of(profile: profile_pb2.Profile) -> tuple[QuietWindow, ...]:
    """The profile's ``quiet_hours`` (windows without a day are skipped)."""
    return tuple(
        QuietWindow(
            day=int(w.day_of_week),
            start_second=_seconds(w.start_time_of_day),
            end_second=_seconds(w.end_time_of_day),
        )
        for w in profile.quiet_hours
        if w.day_of_week
    )


def _spans(
    when: datetime, tz: tzinfo, windows: Iterable[QuietWindow]
) -> tuple[tuple[datetime, datetime], ...]:
    """[start, end) in UTC of every window occurrence that could contain ``when``."""
    return _spans_around(local_day(when, tz), tz, tuple(windows))


@functools.lru_cache(maxsize=4096)
def _spans_around(
    today: date, tz: tzinfo, windows: tuple[QuietWindow, ...]
) -> tuple[tuple[datetime, datetime], ...]:
    anchors = {day.isoweekday(): day for day in (today + timedelta(days=d) for d in _ANCHORS)}
    out: list[tuple[datetime, datetime]] = []
    for w in windows:
        day = anchors.get(w.day)
        if day is None:
            continue
        start = to_utc(day, w.start_second, tz)
        end_day = day if w.end_second > w.start_second else day + timedelta(days=1)
        end = to_utc(end_day, w.end_second, tz, latest=True)
        if start < end:  # empty when the window is exactly a skipped span
            out.append((start, end))
    return tuple(out)


def in_quiet_hours(when: datetime, tz: tzinfo, windows: Sequence[QuietWindow]) -> bool:
    """Whether instant ``when`` falls in one of the windows (in the user's zone ``tz``)."""
    at = _aware(when)
    return any(start <= at < end for start, end in _spans(at, tz, windows))


def quiet_until(when: datetime, tz: tzinfo, windows: Sequence[QuietWindow]) -> datetime | None:
    """When the quiet period around instant ``when`` ends (UTC, strictly after ``when``),
    following back-to-back windows (Mon 22:00-24:00 then Tue 00:00-07:00 end at
    07:00); None when ``when`` is not quiet. Windows covering the whole week
    chain for at most a week."""
    probe = _aware(when)
    end: datetime | None = None
    for _ in range(len(windows) + 1):
        covering = [e for s, e in _spans(probe, tz, windows) if s <= probe < e]
        if not covering:
            break
        end = probe = max(covering)
    return end

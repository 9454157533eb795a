"""kernel.localtime: quiet windows, daily times and local days across both DST transitions.

Three zones, both transitions each: Europe/Madrid (1 h at 02:00/03:00),
America/New_York (1 h, the repeated hour is 01:00-02:00) and
Australia/Lord_Howe (a 30-minute shift). Every expected span is written out
in UTC, found by hand from the zone's offsets, and checked against a sweep of
every minute around the transition, so a span that is off by one minute, has
a hole or is empty fails.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta, tzinfo

import pytest
from google.type import dayofweek_pb2, timeofday_pb2

from kernel import localtime as lt
from kernel.localtime import QuietWindow
from tips.profile.v1 import profile_pb2

pytestmark = pytest.mark.unit

MADRID = lt.zone("Europe/Madrid")
NEW_YORK = lt.zone("America/New_York")
LORD_HOWE = lt.zone("Australia/Lord_Howe")
SAT, SUN, MON = 6, 7, 1


def _s(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 3600 + int(minutes) * 60


def window(day: int, start: str, end: str) -> QuietWindow:
    return QuietWindow(day=day, start_second=_s(start), end_second=_s(end))


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _sweep(day: date) -> list[datetime]:
    """Every minute from the local day before ``day`` to the day after (UTC grid)."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(days=1, hours=14)
    return [start + timedelta(minutes=i) for i in range(int(3.5 * 1440))]


def _quiet_spans(
    instants: Iterable[datetime], tz: tzinfo, windows: Sequence[QuietWindow]
) -> list[tuple[datetime, datetime]]:
    spans: list[tuple[datetime, datetime]] = []
    start: datetime | None = None
    last: datetime | None = None
    for t in instants:
        quiet = lt.in_quiet_hours(t, tz, windows)
        if quiet and start is None:
            start = t
        if not quiet and start is not None:
            spans.append((start, t))
            start = None
        last = t
    assert start is None and last is not None, "sweep ends inside quiet hours"
    return spans


# (zone, the transition's local date, window, expected quiet span in UTC or None)
CASES = [
    # Madrid spring: 02:00-03:00 does not exist (01:00Z, +1 -> +2).
    (
        "madrid-spring-covers",
        MADRID,
        date(2026, 3, 29),
        window(SUN, "01:00", "04:00"),
        ("2026-03-29 00:00", "2026-03-29 02:00"),
    ),
    (
        "madrid-spring-starts-in",
        MADRID,
        date(2026, 3, 29),
        window(SUN, "02:30", "05:00"),
        ("2026-03-29 01:30", "2026-03-29 03:00"),
    ),  # 02:30 -> 03:30 CEST
    (
        "madrid-spring-ends-in",
        MADRID,
        date(2026, 3, 29),
        window(SUN, "00:30", "02:30"),
        ("2026-03-28 23:30", "2026-03-29 01:30"),
    ),  # ends 03:30 CEST
    (
        "madrid-spring-inside",
        MADRID,
        date(2026, 3, 29),
        window(SUN, "02:15", "02:45"),
        ("2026-03-29 01:15", "2026-03-29 01:45"),
    ),  # 03:15-03:45 CEST
    ("madrid-spring-is-the-gap", MADRID, date(2026, 3, 29), window(SUN, "02:00", "03:00"), None),
    (
        "madrid-spring-past-midnight",
        MADRID,
        date(2026, 3, 29),
        window(SAT, "23:00", "02:30"),
        ("2026-03-28 22:00", "2026-03-29 01:30"),
    ),
    # Madrid autumn: 02:00-03:00 happens twice (01:00Z, +2 -> +1).
    (
        "madrid-autumn-covers",
        MADRID,
        date(2026, 10, 25),
        window(SUN, "01:00", "04:00"),
        ("2026-10-24 23:00", "2026-10-25 03:00"),
    ),
    (
        "madrid-autumn-starts-in",
        MADRID,
        date(2026, 10, 25),
        window(SUN, "02:30", "05:00"),
        ("2026-10-25 00:30", "2026-10-25 04:00"),
    ),  # from the first 02:30, no hole
    (
        "madrid-autumn-ends-in",
        MADRID,
        date(2026, 10, 25),
        window(SUN, "00:30", "02:30"),
        ("2026-10-24 22:30", "2026-10-25 01:30"),
    ),  # to the second 02:30
    (
        "madrid-autumn-inside",
        MADRID,
        date(2026, 10, 25),
        window(SUN, "02:15", "02:45"),
        ("2026-10-25 00:15", "2026-10-25 01:45"),
    ),  # both passes of 02:15-02:45
    (
        "madrid-autumn-past-midnight",
        MADRID,
        date(2026, 10, 25),
        window(SAT, "22:00", "02:30"),
        ("2026-10-24 20:00", "2026-10-25 01:30"),
    ),
    # New York spring: 02:00-03:00 does not exist (07:00Z, -5 -> -4).
    (
        "ny-spring-covers",
        NEW_YORK,
        date(2026, 3, 8),
        window(SUN, "01:00", "04:00"),
        ("2026-03-08 06:00", "2026-03-08 08:00"),
    ),
    (
        "ny-spring-starts-in",
        NEW_YORK,
        date(2026, 3, 8),
        window(SUN, "02:30", "05:00"),
        ("2026-03-08 07:30", "2026-03-08 09:00"),
    ),
    (
        "ny-spring-ends-in",
        NEW_YORK,
        date(2026, 3, 8),
        window(SUN, "00:30", "02:30"),
        ("2026-03-08 05:30", "2026-03-08 07:30"),
    ),
    (
        "ny-spring-past-midnight",
        NEW_YORK,
        date(2026, 3, 8),
        window(SAT, "23:30", "02:30"),
        ("2026-03-08 04:30", "2026-03-08 07:30"),
    ),
    # New York autumn: 01:00-02:00 happens twice (06:00Z, -4 -> -5).
    (
        "ny-autumn-covers",
        NEW_YORK,
        date(2026, 11, 1),
        window(SUN, "00:00", "03:00"),
        ("2026-11-01 04:00", "2026-11-01 08:00"),
    ),
    (
        "ny-autumn-starts-in",
        NEW_YORK,
        date(2026, 11, 1),
        window(SUN, "01:30", "04:00"),
        ("2026-11-01 05:30", "2026-11-01 09:00"),
    ),
    (
        "ny-autumn-ends-in",
        NEW_YORK,
        date(2026, 11, 1),
        window(SUN, "00:30", "01:30"),
        ("2026-11-01 04:30", "2026-11-01 06:30"),
    ),
    (
        "ny-autumn-inside",
        NEW_YORK,
        date(2026, 11, 1),
        window(SUN, "01:15", "01:45"),
        ("2026-11-01 05:15", "2026-11-01 06:45"),
    ),
    (
        "ny-autumn-past-midnight",
        NEW_YORK,
        date(2026, 11, 1),
        window(SAT, "23:00", "01:30"),
        ("2026-11-01 03:00", "2026-11-01 06:30"),
    ),
    # Lord Howe DST start: 02:00-02:30 does not exist (Oct 3 15:30Z, +10:30 -> +11).
    (
        "lord-howe-spring-covers",
        LORD_HOWE,
        date(2026, 10, 4),
        window(SUN, "01:00", "03:00"),
        ("2026-10-03 14:30", "2026-10-03 16:00"),
    ),
    (
        "lord-howe-spring-starts-in",
        LORD_HOWE,
        date(2026, 10, 4),
        window(SUN, "02:15", "04:00"),
        ("2026-10-03 15:45", "2026-10-03 17:00"),
    ),  # 02:15 -> 02:45 (+11)
    (
        "lord-howe-spring-ends-in",
        LORD_HOWE,
        date(2026, 10, 4),
        window(SUN, "01:00", "02:15"),
        ("2026-10-03 14:30", "2026-10-03 15:45"),
    ),
    (
        "lord-howe-spring-inside",
        LORD_HOWE,
        date(2026, 10, 4),
        window(SUN, "02:05", "02:25"),
        ("2026-10-03 15:35", "2026-10-03 15:55"),
    ),
    (
        "lord-howe-spring-is-the-gap",
        LORD_HOWE,
        date(2026, 10, 4),
        window(SUN, "02:00", "02:30"),
        None,
    ),
    # Lord Howe DST end: 01:30-02:00 happens twice (Apr 4 15:00Z, +11 -> +10:30).
    (
        "lord-howe-autumn-covers",
        LORD_HOWE,
        date(2026, 4, 5),
        window(SUN, "01:00", "03:00"),
        ("2026-04-04 14:00", "2026-04-04 16:30"),
    ),
    (
        "lord-howe-autumn-starts-in",
        LORD_HOWE,
        date(2026, 4, 5),
        window(SUN, "01:45", "03:00"),
        ("2026-04-04 14:45", "2026-04-04 16:30"),
    ),
    (
        "lord-howe-autumn-ends-in",
        LORD_HOWE,
        date(2026, 4, 5),
        window(SUN, "01:00", "01:45"),
        ("2026-04-04 14:00", "2026-04-04 15:15"),
    ),
    (
        "lord-howe-autumn-inside",
        LORD_HOWE,
        date(2026, 4, 5),
        window(SUN, "01:35", "01:55"),
        ("2026-04-04 14:35", "2026-04-04 15:25"),
    ),
    (
        "lord-howe-autumn-past-midnight",
        LORD_HOWE,
        date(2026, 4, 5),
        window(SAT, "23:00", "01:45"),
        ("2026-04-04 12:00", "2026-04-04 15:15"),
    ),
]


@pytest.mark.parametrize(
    ("tz", "day", "quiet", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_window_span_across_transitions(
    tz: tzinfo, day: date, quiet: QuietWindow, expected: tuple[str, str] | None
) -> None:
    spans = _quiet_spans(_sweep(day), tz, [quiet])
    if expected is None:
        assert spans == []
        return
    start, end = utc(expected[0]), utc(expected[1])
    assert spans == [(start, end)]
    # Anywhere inside, the quiet period ends at the span's end; its local
    # time is the window's end (moved forward by the gap where it is skipped).
    for t in (start, start + (end - start) / 2, end - timedelta(seconds=1)):
        assert lt.quiet_until(t, tz, [quiet]) == end
    assert lt.quiet_until(end, tz, [quiet]) is None
    local_end = end.astimezone(tz)
    end_wall = quiet.end_second % lt.SECONDS_PER_DAY
    naive_end = datetime.combine(local_end.date(), time()) + timedelta(seconds=end_wall)
    exists = (
        lt.to_utc(local_end.date(), end_wall, tz).astimezone(tz).replace(tzinfo=None) == naive_end
    )
    if exists:
        assert local_end.replace(tzinfo=None) == naive_end
    else:  # the end is skipped: it moved forward by the gap
        assert end == lt.to_utc(local_end.date(), end_wall, tz)


def test_the_reported_autumn_bug() -> None:
    """Madrid, 02:15-02:45, asked at 01:20Z on 2026-10-25 (the second 02:20)."""
    quiet = [window(SUN, "02:15", "02:45")]
    asked = utc("2026-10-25 01:20")
    assert lt.in_quiet_hours(asked, MADRID, quiet)
    until = lt.quiet_until(asked, MADRID, quiet)
    assert until == utc("2026-10-25 01:45") and until > asked  # the second 02:45, not 00:45Z
    assert until.astimezone(MADRID).strftime("%H:%M %Z") == "02:45 CET"


def test_chained_windows_across_transitions() -> None:
    # Autumn: Sat 22:00-02:30 ends at the second 02:30, Sun 02:30-07:00 starts
    # at the first: they overlap in real time and chain to 07:00 CET.
    autumn = [window(SAT, "22:00", "02:30"), window(SUN, "02:30", "07:00")]
    assert lt.quiet_until(utc("2026-10-24 21:00"), MADRID, autumn) == utc("2026-10-25 06:00")
    assert _quiet_spans(_sweep(date(2026, 10, 25)), MADRID, autumn) == [
        (utc("2026-10-24 20:00"), utc("2026-10-25 06:00"))
    ]
    # Spring: both 02:30s move to 03:30 CEST, so they still meet.
    spring = [window(SAT, "22:00", "02:30"), window(SUN, "02:30", "07:00")]
    assert lt.quiet_until(utc("2026-03-28 21:30"), MADRID, spring) == utc("2026-03-29 05:00")
    # New York: Sat 23:00-01:00 chains into Sun 01:00-01:30 (the second 01:30).
    ny = [window(SAT, "23:00", "01:00"), window(SUN, "01:00", "01:30")]
    assert lt.quiet_until(utc("2026-11-01 03:30"), NEW_YORK, ny) == utc("2026-11-01 06:30")
    # Sunday night into Monday wraps the week; 24:00 ends at midnight.
    week = [window(SUN, "22:00", "24:00"), window(MON, "00:00", "06:00")]
    assert lt.quiet_until(utc("2026-12-06 21:30"), MADRID, week) == utc("2026-12-07 05:00")
    # Windows covering the whole week stop chaining after a week.
    always = [window(d, "00:00", "24:00") for d in range(1, 8)]
    found = lt.quiet_until(utc("2026-12-02 12:00"), MADRID, always)
    assert found is not None and found > utc("2026-12-08 12:00")


def test_chained_windows_in_an_ordinary_week() -> None:
    night, morning = window(MON, "22:00", "07:00"), window(2, "07:00", "08:00")
    monday = datetime(2026, 11, 30, tzinfo=MADRID)  # a Monday, CET
    assert lt.quiet_until(monday.replace(hour=21, minute=59), MADRID, [night]) is None
    assert lt.quiet_until(monday.replace(hour=23), MADRID, [night]) == utc("2026-12-01 06:00")
    assert lt.quiet_until(monday.replace(hour=23), MADRID, [night, morning]) == utc(
        "2026-12-01 07:00"
    )


# --- properties: every minute of every transition day ---------------------------------------

TRANSITIONS = [
    (MADRID, date(2026, 3, 29)),
    (MADRID, date(2026, 10, 25)),
    (NEW_YORK, date(2026, 3, 8)),
    (NEW_YORK, date(2026, 11, 1)),
    (LORD_HOWE, date(2026, 10, 4)),
    (LORD_HOWE, date(2026, 4, 5)),
]
# Windows touching 00:00-03:30 on Saturday and Sunday in every way, chained and overlapping.
MIXED = [
    window(SAT, "23:30", "01:15"),
    window(SUN, "01:15", "01:45"),
    window(SUN, "02:10", "02:20"),
    window(SUN, "02:40", "03:10"),
    window(SUN, "03:10", "03:20"),
]


def _check_properties(t: datetime, tz: tzinfo, windows: Sequence[QuietWindow]) -> None:
    until = lt.quiet_until(t, tz, windows)
    assert (until is not None) == lt.in_quiet_hours(t, tz, windows), t
    if until is None:
        return
    assert until > t, t
    assert not lt.in_quiet_hours(until, tz, windows), (t, until)
    # Just before the end is still quiet: the period has no hole.
    assert lt.in_quiet_hours(until - timedelta(seconds=1), tz, windows), (t, until)
    local = until.astimezone(tz)
    wall = local.hour * 3600 + local.minute * 60 + local.second
    ends = {w.end_second % lt.SECONDS_PER_DAY for w in windows}
    moved = {
        w.end_second % lt.SECONDS_PER_DAY
        for w in windows
        for day in (local.date(), local.date() - timedelta(days=1))
        if lt.to_utc(day, w.end_second, tz, latest=True) == until
    }
    assert wall in ends or moved, (t, until)


def _transition_day(tz: tzinfo, day: date, step: int) -> list[datetime]:
    """Every ``step`` minutes from 21:00 the local evening before ``day`` to its end."""
    start = lt.local_midnight(day, tz) - timedelta(hours=3)
    end = lt.local_midnight(day + timedelta(days=1), tz)
    return [
        start + timedelta(minutes=m)
        for m in range(0, int((end - start).total_seconds() // 60), step)
    ]


@pytest.mark.parametrize(("tz", "day"), TRANSITIONS, ids=[f"{z}-{d}" for z, d in TRANSITIONS])
def test_properties_every_minute_of_transition_days(tz: tzinfo, day: date) -> None:
    for t in _transition_day(tz, day, 1):
        _check_properties(t, tz, MIXED)
    for windows in (MIXED[:1], MIXED[1:3], [window(SUN, "00:00", "24:00")]):
        for t in _transition_day(tz, day, 5):
            _check_properties(t, tz, windows)


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - the dense sweep above still runs
    given = None

if given is not None:
    _minutes = st.integers(min_value=0, max_value=24 * 60).map(lambda m: m * 60)
    _windows = st.lists(
        st.builds(QuietWindow, st.integers(1, 7), _minutes.filter(lambda s: s < 86400), _minutes),
        max_size=5,
    )
    _zones = st.sampled_from(TRANSITIONS)

    @settings(max_examples=400, deadline=None)
    @given(_zones, _windows, st.integers(min_value=-36 * 60, max_value=48 * 60))
    def test_properties_random_windows(
        transition: tuple[tzinfo, date], windows: list[QuietWindow], minute: int
    ) -> None:
        tz, day = transition
        t = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(minutes=minute)
        _check_properties(t, tz, windows)


# --- daily times, local days ----------------------------------------------------------------


def test_to_utc_skipped_moves_forward_repeated_takes_first() -> None:
    assert lt.to_utc(date(2026, 3, 29), _s("02:30"), MADRID) == utc("2026-03-29 01:30")
    assert lt.to_utc(date(2026, 10, 25), _s("02:30"), MADRID) == utc("2026-10-25 00:30")
    assert lt.to_utc(date(2026, 10, 25), _s("02:30"), MADRID, latest=True) == utc(
        "2026-10-25 01:30"
    )
    assert lt.to_utc(date(2026, 10, 4), _s("02:10"), LORD_HOWE) == utc("2026-10-03 15:40")
    assert lt.to_utc(date(2026, 12, 1), lt.SECONDS_PER_DAY, MADRID) == utc("2026-12-01 23:00")


def test_next_time_of_day_once_a_day_across_transitions() -> None:
    at = _s("02:30")
    # Spring: 02:30 does not exist on the 29th: 03:30 CEST.
    assert lt.next_time_of_day(utc("2026-03-28 12:00"), MADRID, at) == utc("2026-03-29 01:30")
    # Autumn: the first 02:30 (CEST); asked after it, the next day's, not the second 02:30.
    assert lt.next_time_of_day(utc("2026-10-24 12:00"), MADRID, at) == utc("2026-10-25 00:30")
    assert lt.next_time_of_day(utc("2026-10-25 00:30"), MADRID, at) == utc("2026-10-25 00:30")
    assert lt.next_time_of_day(utc("2026-10-25 00:31"), MADRID, at) == utc("2026-10-26 01:30")
    # Lord Howe, 30 minutes: 01:45 on the autumn day is 14:45Z (first pass, +11).
    assert lt.next_time_of_day(utc("2026-04-04 10:00"), LORD_HOWE, _s("01:45")) == utc(
        "2026-04-04 14:45"
    )
    assert lt.next_time_of_day(utc("2026-04-04 14:46"), LORD_HOWE, _s("01:45")) == utc(
        "2026-04-05 15:15"
    )
    # A zone ahead of UTC: 20:00 in Tokyo is 11:00Z, today or tomorrow.
    tokyo = lt.zone("Asia/Tokyo")
    assert lt.next_time_of_day(utc("2026-12-01 10:59"), tokyo, _s("20:00")) == utc(
        "2026-12-01 11:00"
    )
    assert lt.next_time_of_day(utc("2026-12-01 11:01"), tokyo, _s("20:00")) == utc(
        "2026-12-02 11:00"
    )


def test_local_day_and_midnight() -> None:
    late = utc("2026-11-30 23:30")
    assert lt.local_day(late, MADRID) == date(2026, 12, 1) and lt.local_day(late, UTC) == date(
        2026, 11, 30
    )
    assert lt.local_midnight(late, MADRID) == utc("2026-11-30 23:00")
    assert lt.local_midnight(date(2026, 10, 25), MADRID) == utc("2026-10-24 22:00")
    # Santiago skips midnight on 2026-09-06 (00:00 -> 01:00): the day starts at 01:00.
    santiago = lt.zone("America/Santiago")
    assert lt.local_midnight(date(2026, 9, 6), santiago) == utc("2026-09-06 04:00")
    # Havana repeats 00:00-01:00 on 2026-11-01: the day starts at the first midnight.
    havana = lt.zone("America/Havana")
    assert lt.local_midnight(utc("2026-11-01 05:30"), havana) == utc("2026-11-01 04:00")
    with pytest.raises(ValueError):
        lt.local_day(datetime(2026, 1, 1), MADRID)  # naive: refused


def test_zone_and_windows_of_profile() -> None:
    assert lt.zone("Europe/Madrid") == MADRID
    assert lt.zone("") is UTC and lt.zone("Mars/Olympus") is UTC and lt.zone("America") is UTC
    assert lt.zone("../../etc/passwd") is UTC
    profile = profile_pb2.Profile(
        quiet_hours=[
            profile_pb2.QuietHoursWindow(
                day_of_week=dayofweek_pb2.FRIDAY,
                start_time_of_day=timeofday_pb2.TimeOfDay(hours=22, minutes=30, seconds=15),
                end_time_of_day=timeofday_pb2.TimeOfDay(hours=24),
            ),
            profile_pb2.QuietHoursWindow(  # no day: skipped
                start_time_of_day=timeofday_pb2.TimeOfDay(hours=1),
                end_time_of_day=timeofday_pb2.TimeOfDay(hours=2),
            ),
        ]
    )
    assert lt.windows_of(profile) == (QuietWindow(5, 22 * 3600 + 30 * 60 + 15, 86400),)

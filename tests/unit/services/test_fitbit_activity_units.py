"""Fitbit activity connector, pure parts: normalisers, the user's zone, daily increases."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.integrations.connectors import fitbit_activity as fa
from services.integrations.connectors import fitbit_api
from services.integrations.connectors.base import MalformedRecord
from services.integrations.connectors.daily_totals import (
    Increase,
    Totals,
    ledger_from_json,
    ledger_to_json,
    reconcile,
)
from tips.events.v1 import signal_pb2

pytestmark = pytest.mark.unit
CONN = "users/u1/connections/c1"
MINUS_5 = timezone(timedelta(hours=-5))


def _run(**extra: Any) -> dict[str, Any]:
    return {
        "logId": 42, "activityName": "Run", "startTime": "2026-11-30T07:05:00.000+01:00",
        "duration": 1_800_000, "activeDuration": 1_700_000, "calories": 312,
        "distance": 5.2, "distanceUnit": "Kilometer", "steps": 6100,
        "lastModified": "2026-11-30T08:00:00.000Z", **extra,
    }  # fmt: skip


def test_workout_normalised_in_si_units() -> None:
    signal = fa.normalise_workout(_run(), CONN, UTC)
    assert signal.client_signal_id == "fitbit:workout:42:2026-11-30T08:00:00.000Z"
    assert signal.kind == signal_pb2.SIGNAL_KIND_WORKOUT
    assert signal.source == signal_pb2.SIGNAL_SOURCE_CONNECTOR and signal.connection == CONN
    assert signal.start_time.ToDatetime(UTC) == datetime(2026, 11, 30, 6, 5, tzinfo=UTC)
    assert signal.end_time.ToDatetime(UTC) == datetime(2026, 11, 30, 6, 35, tzinfo=UTC)
    assert signal.workout.activity == "run"
    assert signal.workout.kilocalories == 312
    assert signal.workout.distance_meters == pytest.approx(5200)


def test_workout_miles_become_metres_and_a_new_version_a_new_id() -> None:
    signal = fa.normalise_workout(_run(distance=3.1, distanceUnit="Mile"), CONN, UTC)
    assert signal.workout.distance_meters == pytest.approx(3.1 * 1609.344)
    edited = fa.normalise_workout(_run(lastModified="2026-12-01T09:00:00.000Z"), CONN, UTC)
    assert edited.client_signal_id != signal.client_signal_id


def test_workout_start_without_offset_uses_the_profile_zone() -> None:
    signal = fa.normalise_workout(_run(startTime="2026-11-30T07:05:00.000"), CONN, MINUS_5)
    assert signal.start_time.ToDatetime(UTC) == datetime(2026, 11, 30, 12, 5, tzinfo=UTC)


def test_workout_without_distance_or_calories_is_zero_not_malformed() -> None:
    bare = {k: v for k, v in _run().items() if k not in ("distance", "distanceUnit", "calories")}
    signal = fa.normalise_workout(bare, CONN, UTC)
    assert signal.workout.distance_meters == 0 and signal.workout.kilocalories == 0


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("not an object", "not an object"),
        (_run(logId="42"), "logId"),
        (_run(logId=True), "logId"),
        (_run(activityName=""), "activityName"),
        (_run(startTime="yesterday"), "startTime"),
        (_run(startTime=None), "startTime"),
        (_run(duration=-1), "duration"),
        (_run(duration="30 min"), "duration"),
        (_run(duration=25 * 3600 * 1000), "duration"),
        (_run(calories=-5), "calories"),
        (_run(distance=2, distanceUnit="Furlong"), "distanceUnit"),
        (_run(distance="far"), "distance"),
        (_run(distance=900, distanceUnit="Mile"), "distance"),
    ],
)
def test_malformed_workouts_raise_naming_the_field(bad: object, says: str) -> None:
    with pytest.raises(MalformedRecord, match=says):
        fa.normalise_workout(bad, CONN, UTC)


def test_workout_needs_a_duration() -> None:
    run = {k: v for k, v in _run().items() if k not in ("duration", "activeDuration")}
    with pytest.raises(MalformedRecord, match="duration"):
        fa.normalise_workout(run, CONN, UTC)


def test_user_zone_prefers_the_iana_zone_then_the_offset() -> None:
    assert fitbit_api.user_zone({"user": {"timezone": "Europe/Berlin"}}) == ZoneInfo(
        "Europe/Berlin"
    )
    offset_only = {"user": {"timezone": "Not/AZone", "offsetFromUTCMillis": -18_000_000}}
    assert fitbit_api.user_zone(offset_only) == MINUS_5
    assert fitbit_api.user_zone({"user": {"offsetFromUTCMillis": True}}) == UTC
    assert fitbit_api.user_zone("garbage") == UTC


def test_series_reads_fitbit_strings_and_flags_bad_values() -> None:
    body = {
        "activities-steps": [
            {"dateTime": "2026-11-29", "value": "8123"},
            {"dateTime": "2026-11-30", "value": "lots"},
            {"dateTime": "2026-12-01", "value": "-3"},
            {"dateTime": "someday", "value": "1"},
        ]
    }
    values, bad, undated = fa.series(body, "steps")
    assert values == {date(2026, 11, 29): 8123}
    assert bad == {date(2026, 11, 30), date(2026, 12, 1)}
    assert undated == 1
    assert fa.series({"unexpected": 1}, "steps") == ({}, set(), 0)


def test_steps_signal_spans_the_local_day_and_names_the_new_totals() -> None:
    zone = ZoneInfo("Europe/Berlin")
    now = datetime(2026, 11, 30, 15, 0, tzinfo=UTC)
    past = Increase(date(2026, 11, 29), 500, 3, Totals(9000, 40))
    signal = fa.steps_signal(past, zone, now, CONN)
    assert signal.client_signal_id == "fitbit:steps:2026-11-29:9000:40"
    assert signal.kind == signal_pb2.SIGNAL_KIND_STEPS
    assert signal.steps.count == 500 and signal.steps.active_minutes == 3
    # Local midnight in Berlin (UTC+1 in winter) to the next one.
    assert signal.start_time.ToDatetime(UTC) == datetime(2026, 11, 28, 23, tzinfo=UTC)
    assert signal.end_time.ToDatetime(UTC) == datetime(2026, 11, 29, 23, tzinfo=UTC)
    today = fa.steps_signal(Increase(date(2026, 11, 30), 10, 0, Totals(10, 0)), zone, now, CONN)
    assert today.end_time.ToDatetime(UTC) == now  # today: up to the run


def test_reconcile_sends_only_increases_and_counts_corrections() -> None:
    d1, d2, d3 = date(2026, 11, 28), date(2026, 11, 29), date(2026, 11, 30)
    sent = {d1: Totals(7000, 20), d2: Totals(5000, 10), date(2026, 11, 1): Totals(1, 1)}
    seen = {d1: Totals(7000, 20), d2: Totals(4900, 15), d3: Totals(300, 0)}
    out = reconcile(sent, seen, keep_from=d1)
    assert out.increases == [
        Increase(d2, 0, 5, Totals(5000, 15)),  # steps fell: not sent, kept at what was sent
        Increase(d3, 300, 0, Totals(300, 0)),
    ]
    assert out.corrections == [d2]
    assert out.ledger == {d1: Totals(7000, 20), d2: Totals(5000, 15), d3: Totals(300, 0)}
    # A re-run with the same totals sends nothing.
    again = reconcile(out.ledger, seen, keep_from=d1)
    assert again.increases == [] and again.ledger == out.ledger


def test_reconciled_increases_sum_to_the_provider_total() -> None:
    day = date(2026, 11, 30)
    ledger: dict[date, Totals] = {}
    sent_steps = 0
    for total in (0, 120, 120, 4000, 8123):
        out = reconcile(ledger, {day: Totals(total, total // 200)}, keep_from=day)
        sent_steps += sum(i.steps for i in out.increases)
        ledger = out.ledger
    assert sent_steps == 8123 and ledger[day] == Totals(8123, 40)


def test_ledger_json_round_trip_drops_unreadable_entries() -> None:
    ledger = {date(2026, 11, 30): Totals(8123, 42)}
    assert ledger_from_json(ledger_to_json(ledger)) == ledger
    assert ledger_from_json({"2026-11-30": [1, -2], "x": [1, 2], "2026-11-29": "a"}) == {}
    assert ledger_from_json(None) == {}

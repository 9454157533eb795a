"""The fitbit_activity connector end to end: the stand-in Fitbit over real HTTP
(activity list, steps and active-minutes time series, profile), the real
integrations and events services (PostgreSQL + JetStream).

The stand-in is one Fitbit account shared by this module's tests: each test
sets its data first (``_account``). The user's zone is picked so that local
time is about noon: no test run crosses a local midnight.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest

from kernel.errors import error_info
from kernel.names import Pattern
from tests.support.integrations_stack import Stack, connect, md, new_user, run_sync
from tests.support.waiting import eventually
from tips.events.v1 import signal_pb2
from tips.integrations.v1 import connection_pb2
from tips.integrations.v1 import integrations_service_pb2 as pb
from tips.profile.v1 import consent_pb2
from tips.profile.v1 import events_pb2 as profile_events

pytestmark = pytest.mark.integration

FITNESS = "fitness-data-for-tips"
SLEEP = "sleep-data-for-tips"
OK = connection_pb2.SYNC_OUTCOME_SUCCEEDED
CONNECTION = Pattern("users/{user}/connections/{connection}")
FAIRLY, VERY = "minutesFairlyActive", "minutesVeryActive"


def _account(stack: Stack) -> tuple[ZoneInfo, date]:
    """Reset the stand-in account to a zone where it is about noon; its local today."""
    s = stack.standin
    s.activity_logs.clear()
    s.daily.clear()
    s.faults.clear()
    s.faults_at.clear()
    now = datetime.now(UTC)
    hours = 12 - now.hour  # -11..+12; Etc/GMT-N is UTC+N
    s.timezone = f"Etc/GMT{-hours:+d}" if hours else "Etc/UTC"
    s.utc_offset_millis = hours * 3_600_000
    zone = ZoneInfo(s.timezone)
    return zone, now.astimezone(zone).date()


def _day(stack: Stack, day: date, steps: Any, fairly: Any = 0, very: Any = 0) -> None:
    stack.standin.daily[day.isoformat()] = {"steps": steps, FAIRLY: fairly, VERY: very}


def _workout(log_id: int, start: str, **extra: Any) -> dict[str, Any]:
    return {
        "logId": log_id, "activityName": "Walk", "startTime": start,
        "duration": 1_800_000, "activeDuration": 1_800_000, "calories": 150,
        "distance": 2.5, "distanceUnit": "Kilometer", "steps": 3000,
        "lastModified": f"{start[:10]}T20:00:00.000Z", **extra,
    }  # fmt: skip


async def _signals(stack: Stack, user: str) -> list[signal_pb2.Signal]:
    rows = await stack.db.fetch("SELECT payload FROM events.signals WHERE user_id = $1", user)
    return [signal_pb2.Signal.FromString(r["payload"]) for r in rows]


def _day_sums(signals: list[signal_pb2.Signal], zone: ZoneInfo) -> dict[date, tuple[int, int]]:
    """Stored STEPS signals summed per local day (the day their period starts)."""
    sums: dict[date, list[int]] = defaultdict(lambda: [0, 0])
    for s in signals:
        if s.kind == signal_pb2.SIGNAL_KIND_STEPS:
            day = s.start_time.ToDatetime(UTC).astimezone(zone).date()
            sums[day][0] += s.steps.count
            sums[day][1] += s.steps.active_minutes
    return {d: (v[0], v[1]) for d, v in sums.items()}


def _provider_totals(stack: Stack) -> dict[date, tuple[int, int]]:
    return {
        date.fromisoformat(d): (int(v["steps"]), int(v[FAIRLY]) + int(v[VERY]))
        for d, v in stack.standin.daily.items()
        if int(v["steps"]) or int(v[FAIRLY]) or int(v[VERY])
    }


async def _cursor(stack: Stack, name: str) -> dict[str, Any]:
    user, connection = CONNECTION.parse(name)
    raw = await stack.db.fetchval(
        "SELECT cursor FROM integrations.connections WHERE user_id = $1 AND connection_id = $2",
        user, connection,
    )  # fmt: skip
    return json.loads(raw) if isinstance(raw, str) else dict(raw)


async def _connected(stack: Stack) -> tuple[str, str]:
    user = new_user()
    stack.profile.grant(user, FITNESS)
    return user, await connect(stack, user, "fitbit_activity", "activity")


async def test_first_sync_backfills_and_a_second_run_emits_nothing(stack: Stack) -> None:
    zone, today = _account(stack)
    _day(stack, today, 4100, 10, 5)
    _day(stack, today - timedelta(days=1), 9000, 30, 12)
    _day(stack, today - timedelta(days=20), 7000)  # beyond the re-read window, within backfill
    _day(stack, today - timedelta(days=45), 9999)  # before the 30-day backfill
    y = (today - timedelta(days=1)).isoformat()
    s = stack.standin
    s.activity_logs += [
        _workout(1, f"{y}T07:05:00.000{datetime.now(zone).isoformat()[-6:]}"),
        # No offset: the profile's zone applies.
        _workout(2, f"{y}T18:30:00.000", activityName="Run", distance=3.1, distanceUnit="Mile"),
        _workout(3, f"{today.isoformat()}T06:00:00.000", activityName="Yoga", distance=0),
        _workout(4, f"{(today - timedelta(days=45)).isoformat()}T06:00:00.000"),  # too old
    ]
    user, name = await _connected(stack)
    before = len(s.requests)

    first = await run_sync(stack, name)
    assert first.result.outcome == OK, first.result.error
    # 31 days of the series (backfill through today) + 3 workouts over 2 pages of 2.
    assert first.result.records_fetched == 31 + 3
    assert first.result.signals_emitted == 3 + 3
    urls = s.requests[before:]
    oldest = (datetime.now(UTC) - timedelta(days=30)).astimezone(zone).date()
    for resource in ("steps", FAIRLY, VERY):
        assert sum(f"/activities/{resource}/date/{oldest}/{today}.json" in u for u in urls) == 1
    assert sum("activities/list.json" in u for u in urls) == 2  # followed pagination.next

    signals = await _signals(stack, user)
    assert _day_sums(signals, zone) == {
        today: (4100, 15),
        today - timedelta(days=1): (9000, 42),
        today - timedelta(days=20): (7000, 0),
    }
    steps = [x for x in signals if x.kind == signal_pb2.SIGNAL_KIND_STEPS]
    assert all(
        x.connection == name and x.source == signal_pb2.SIGNAL_SOURCE_CONNECTOR for x in steps
    )
    yesterday = next(x for x in steps if x.client_signal_id == f"fitbit:steps:{y}:9000:42")
    midnight = datetime.combine(today - timedelta(days=1), datetime.min.time(), tzinfo=zone)
    assert yesterday.start_time.ToDatetime(UTC) == midnight
    assert yesterday.end_time.ToDatetime(UTC) == midnight + timedelta(days=1)
    workouts = {
        x.client_signal_id.split(":")[2]: x
        for x in signals
        if x.kind == signal_pb2.SIGNAL_KIND_WORKOUT
    }
    assert sorted(workouts) == ["1", "2", "3"]
    run = workouts["2"]
    assert run.workout.activity == "run"
    assert run.workout.distance_meters == pytest.approx(3.1 * 1609.344)
    local = datetime.fromisoformat(f"{y}T18:30:00").replace(tzinfo=zone)
    assert run.start_time.ToDatetime(UTC) == local
    assert run.end_time.ToDatetime(UTC) == local + timedelta(minutes=30)

    # The cursor remembers the last 7 local days' sent totals, and the workout window.
    cursor = await _cursor(stack, name)
    assert cursor["days"] == {today.isoformat(): [4100, 15], y: [9000, 42]}
    assert cursor["today"] == today.isoformat() and "next" not in cursor
    assert cursor["after_date"] == (today - timedelta(days=1)).isoformat()

    before = len(s.requests)
    second = await run_sync(stack, name)
    assert second.result.outcome == OK, second.result.error
    assert second.result.signals_emitted == 0
    assert len(await _signals(stack, user)) == len(signals)
    window = f"/activities/steps/date/{today - timedelta(days=6)}/{today}.json"
    assert any(window in u for u in s.requests[before:])


async def test_growing_and_late_days_emit_exactly_the_increase(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    zone, today = _account(stack)
    yesterday = today - timedelta(days=1)
    _day(stack, today, 3000, 5, 0)
    _day(stack, yesterday, 9000, 20, 10)
    user, name = await _connected(stack)
    assert (await run_sync(stack, name)).result.signals_emitted == 2

    # Today grows; yesterday's tracker syncs late.
    _day(stack, today, 5000, 5, 7)
    _day(stack, yesterday, 10_500, 20, 10)
    grown = await run_sync(stack, name)
    assert grown.result.outcome == OK, grown.result.error
    assert grown.result.signals_emitted == 2
    signals = await _signals(stack, user)
    new = {x.client_signal_id: (x.steps.count, x.steps.active_minutes) for x in signals}
    assert new[f"fitbit:steps:{today}:5000:12"] == (2000, 7)
    assert new[f"fitbit:steps:{yesterday}:10500:30"] == (1500, 0)
    assert _day_sums(signals, zone) == _provider_totals(stack)

    # The provider corrects yesterday down: nothing negative is sent, it is counted.
    _day(stack, yesterday, 10_400, 20, 10)
    with caplog.at_level(logging.INFO):
        corrected = await run_sync(stack, name)
    assert corrected.result.outcome == OK and corrected.result.signals_emitted == 0
    assert (await _cursor(stack, name))["corrections"] == 1
    assert any("lowered daily totals" in r.getMessage() for r in caplog.records)
    # It grows past what was sent: only the part above it is new.
    _day(stack, yesterday, 10_600, 20, 10)
    assert (await run_sync(stack, name)).result.signals_emitted == 1
    assert _day_sums(await _signals(stack, user), zone)[yesterday] == (10_600, 30)

    # A full resync re-reads the backfill but remembers what was sent.
    _day(stack, today, 5600, 5, 7)
    resync = await run_sync(stack, name, full_resync=True)
    assert resync.result.outcome == OK, resync.result.error
    assert resync.result.signals_emitted == 1
    assert _day_sums(await _signals(stack, user), zone) == _provider_totals(stack)


async def test_pagination_resumes_from_the_cursor_after_a_failure(stack: Stack) -> None:
    _, today = _account(stack)
    start = (today - timedelta(days=3)).isoformat()
    stack.standin.activity_logs += [_workout(100 + i, f"{start}T0{i}:00:00.000") for i in range(5)]
    user, name = await _connected(stack)
    # Page 2 of the list (offset=2) fails until the retries are spent.
    stack.standin.faults_at += [("offset=2", 503, {})] * 3
    first = await run_sync(stack, name)
    assert first.result.outcome == connection_pb2.SYNC_OUTCOME_PARTIAL
    assert first.result.signals_emitted == 2
    cursor = await _cursor(stack, name)
    assert "offset=2" in cursor["next"]

    before = len(stack.standin.requests)
    second = await run_sync(stack, name)
    assert second.result.outcome == OK, second.result.error
    assert second.result.signals_emitted == 3
    lists = [u for u in stack.standin.requests[before:] if "activities/list.json" in u]
    assert "offset=2" in lists[0] and "offset=4" in lists[1] and len(lists) == 2
    ids = sorted(x.client_signal_id for x in await _signals(stack, user))
    assert ids == sorted(f"fitbit:workout:{100 + i}:{start}T20:00:00.000Z" for i in range(5))
    assert "next" not in await _cursor(stack, name)


async def test_malformed_records_are_skipped_and_counted(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    zone, today = _account(stack)
    _day(stack, today, 2000, 3, 1)
    _day(stack, today - timedelta(days=1), "lots")  # not a number
    _day(stack, today - timedelta(days=2), 500, 2000)  # more active minutes than a day has
    y = (today - timedelta(days=1)).isoformat()
    stack.standin.activity_logs += [
        _workout(7, f"{y}T07:00:00.000"),
        {k: v for k, v in _workout(8, f"{y}T08:00:00.000").items() if k != "logId"},
        _workout(9, f"{y}T09:00:00.000", distance=4, distanceUnit="Furlong"),
    ]
    user, name = await _connected(stack)
    with caplog.at_level(logging.INFO):
        run = await run_sync(stack, name)
    assert run.result.outcome == OK, run.result.error
    assert run.result.records_fetched == 31 + 3
    assert run.result.signals_emitted == 2  # today's steps and workout 7
    skipped = [getattr(r, "skipped", 0) for r in caplog.records if "malformed" in r.getMessage()]
    assert sum(skipped) == 4
    assert sorted(x.client_signal_id for x in await _signals(stack, user)) == [
        f"fitbit:steps:{today}:2000:4",
        f"fitbit:workout:7:{y}T20:00:00.000Z",
    ]
    # A skipped day is not in the ledger: once readable, its whole total is sent.
    _day(stack, today - timedelta(days=1), 6000)
    again = await run_sync(stack, name)
    assert again.result.signals_emitted == 1
    assert _day_sums(await _signals(stack, user), zone)[today - timedelta(days=1)] == (6000, 0)


async def test_no_fitness_consent_no_fetch(stack: Stack) -> None:
    _, today = _account(stack)
    _day(stack, today, 100)
    provider = await stack.api.GetProvider(pb.GetProviderRequest(name="providers/fitbit_activity"))
    assert provider.provider.consent_purpose == FITNESS
    sleeper = new_user()
    stack.profile.grant(sleeper, SLEEP)  # another purpose does not cover activity data
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await connect(stack, sleeper, "fitbit_activity", "activity")
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(refused.value)
    assert info is not None and info.reason == "CONSENT_REQUIRED"

    user, name = await _connected(stack)
    assert (await run_sync(stack, name)).result.outcome == OK
    stack.profile.revoke(user, FITNESS)
    event = profile_events.ConsentChanged(
        event_id=uuid.uuid4().hex, user=f"users/{user}",
        consent=f"users/{user}/consents/fitness", text_version="1",
        purpose=consent_pb2.CONSENT_PURPOSE_FITNESS_DATA_FOR_TIPS,
        state=consent_pb2.CONSENT_STATE_REVOKED,
        previous_state=consent_pb2.CONSENT_STATE_GRANTED,
    )  # fmt: skip
    event.occur_time.GetCurrentTime()
    await stack.bus.publish(event, msg_id=event.event_id)

    async def attempt() -> tuple[int, pb.RunConnectionSyncResponse]:
        before = len(stack.standin.requests)
        run = await run_sync(stack, name)
        return len(stack.standin.requests) - before, run

    # The consumer evicts the cached grant; from then on no provider request is made.
    requests, run = await eventually(
        attempt,
        lambda r: r[1].result.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0],
        every=0.3,
    )
    assert requests == 0 and run.result.records_fetched == 0
    got = await stack.api.GetConnection(pb.GetConnectionRequest(name=name), metadata=md(user))
    assert FITNESS in got.connection.sync_status.last_error.message

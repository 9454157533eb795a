"""services.recommender: context folding, the rules and the reaction checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from kernel.errors import InvalidArgument
from services.recommender import domain, rules
from services.recommender.domain import UserContext
from tips.events.v1 import signal_pb2

pytestmark = pytest.mark.unit

NOW = datetime(2025, 6, 2, 13, 0, tzinfo=UTC)


def _ts(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _signal(start: datetime, end: datetime | None = None, **payload: object) -> signal_pb2.Signal:
    signal = signal_pb2.Signal(start_time=_ts(start), ingest_time=_ts(NOW), **payload)  # type: ignore[arg-type]
    if end is not None:
        signal.end_time.CopyFrom(_ts(end))
    return signal


def _steps(count: int, at: datetime = NOW) -> signal_pb2.Signal:
    return _signal(at, steps=signal_pb2.StepsPayload(count=count))


def _decide(ctx: UserContext, count: int = 1) -> list[rules.Proposal]:
    return rules.decide(domain.features(ctx, NOW), ctx.suppressed_until, count)


def test_no_signals_gives_the_fallback() -> None:
    (tip,) = _decide(UserContext("u"))
    assert tip.entry.id == "drink_water"


def test_low_steps_today_suggests_a_walk_naming_the_steps() -> None:
    ctx = domain.fold(UserContext("u"), _steps(600))
    ctx = domain.fold(ctx, _steps(300))
    (tip,) = _decide(ctx)
    assert tip.entry.id == "walk_low_steps"
    assert "900 steps" in tip.explanation


def test_steps_of_a_past_day_do_not_count_today() -> None:
    ctx = domain.fold(UserContext("u"), _steps(900, NOW - timedelta(days=1)))
    assert _decide(ctx)[0].entry.id == "drink_water"
    ctx = domain.fold(ctx, _steps(8000))
    assert ctx.steps_today == 8000
    assert _decide(ctx)[0].entry.id == "drink_water"  # goal met


def test_short_sleep_beats_low_steps() -> None:
    sleep = _signal(
        NOW - timedelta(hours=10),
        NOW - timedelta(hours=5),
        sleep=signal_pb2.SleepPayload(asleep_minutes=290),
    )
    ctx = domain.fold(domain.fold(UserContext("u"), _steps(100)), sleep)
    first, second = _decide(ctx, count=2)
    assert first.entry.id == "wind_down_earlier"
    assert "4 h 50 min" in first.explanation
    assert second.entry.id == "walk_low_steps"


def test_free_block_before_a_meeting() -> None:
    meeting = _signal(
        NOW + timedelta(minutes=45),
        NOW + timedelta(minutes=75),
        calendar_event=signal_pb2.CalendarEventPayload(event_id="m1", busy=True),
    )
    ctx = domain.fold(UserContext("u"), meeting)
    (tip,) = _decide(ctx)
    assert tip.entry.id == "outside_before_meeting"
    assert "45 free minutes" in tip.explanation and "13:45" in tip.explanation
    assert tip.expire_time == NOW + timedelta(minutes=45)
    cancelled = _signal(
        NOW + timedelta(minutes=45),
        NOW + timedelta(minutes=75),
        calendar_event=signal_pb2.CalendarEventPayload(event_id="m1", busy=True, cancelled=True),
    )
    assert _decide(domain.fold(ctx, cancelled))[0].entry.id == "drink_water"


def test_low_mood() -> None:
    mood = _signal(NOW - timedelta(minutes=20), mood=signal_pb2.MoodPayload(score=2))
    (tip,) = _decide(domain.fold(UserContext("u"), mood))
    assert tip.entry.id == "breathing_low_mood"
    assert "2/5" in tip.explanation


def test_suppressed_tips_are_not_offered() -> None:
    ctx = domain.fold(UserContext("u"), _steps(100))
    until = domain.quiet_until(signal_pb2.TIP_REACTION_DONE, NOW, None)
    ctx = domain.suppress(ctx, "walk_low_steps", until)
    assert _decide(ctx)[0].entry.id == "drink_water"


def test_context_round_trips_through_json() -> None:
    meeting = _signal(
        NOW + timedelta(hours=1),
        NOW + timedelta(hours=2),
        calendar_event=signal_pb2.CalendarEventPayload(event_id="m1", busy=True),
    )
    ctx = domain.fold(domain.fold(UserContext("u"), _steps(5)), meeting)
    ctx = domain.suppress(ctx, "drink_water", NOW)
    assert UserContext.from_json("u", ctx.to_json()) == ctx


def test_snooze_checks() -> None:
    done, snooze = signal_pb2.TIP_REACTION_DONE, signal_pb2.TIP_REACTION_SNOOZE
    assert domain.snooze_until(done, NOW) is None
    assert domain.snooze_until(snooze, NOW) == NOW + timedelta(hours=1)
    assert domain.snooze_until(snooze, NOW, duration=timedelta(minutes=5)) == NOW + timedelta(
        minutes=5
    )
    cases = [
        (signal_pb2.TIP_REACTION_UNSPECIFIED, {}, "reaction"),
        (done, {"until": NOW + timedelta(hours=1)}, "snooze_until"),
        (snooze, {"until": NOW - timedelta(minutes=1)}, "snooze_until"),
        (snooze, {"duration": timedelta(days=8)}, "snooze_duration"),
    ]
    for reaction, kwargs, field in cases:
        with pytest.raises(InvalidArgument) as raised:
            domain.snooze_until(reaction, NOW, **kwargs)  # type: ignore[arg-type]
        assert [f for f, _ in raised.value.violations] == [field]

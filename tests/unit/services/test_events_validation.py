"""services.events.domain: which ingest items are rejected, and the field named."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from kernel.errors import InvalidArgument
from services.events import domain
from tips.events.v1 import events_service_pb2, signal_pb2

pytestmark = pytest.mark.unit

NOW = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
USER = "u_1"


def _ts(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _signal(**payload: object) -> signal_pb2.Signal:
    kind = {
        "steps": signal_pb2.SIGNAL_KIND_STEPS,
        "sleep": signal_pb2.SIGNAL_KIND_SLEEP,
        "mood": signal_pb2.SIGNAL_KIND_MOOD,
        "tip_reaction": signal_pb2.SIGNAL_KIND_TIP_REACTION,
        "calendar_event": signal_pb2.SIGNAL_KIND_CALENDAR_EVENT,
        "workout": signal_pb2.SIGNAL_KIND_WORKOUT,
    }[next(iter(payload))]
    return signal_pb2.Signal(
        client_signal_id="c1",
        kind=kind,
        source=signal_pb2.SIGNAL_SOURCE_PHONE,
        start_time=_ts(NOW - timedelta(hours=1)),
        end_time=_ts(NOW),
        **payload,  # type: ignore[arg-type]
    )


def _fields(signal: signal_pb2.Signal) -> list[str]:
    return [f for f, _ in domain.validate_signal(signal, USER, NOW)]


def test_good_signals_pass() -> None:
    assert _fields(_signal(steps=signal_pb2.StepsPayload(count=900))) == []
    assert _fields(_signal(steps=signal_pb2.StepsPayload(count=900, active_minutes=1440))) == []
    assert _fields(_signal(sleep=signal_pb2.SleepPayload(asleep_minutes=420, score=80))) == []
    assert _fields(_signal(mood=signal_pb2.MoodPayload(score=1))) == []
    reaction = signal_pb2.TipReactionPayload(
        tip=f"users/{USER}/tips/t1", reaction=signal_pb2.TIP_REACTION_DONE
    )
    assert _fields(_signal(tip_reaction=reaction)) == []


@pytest.mark.parametrize(
    ("signal", "field"),
    [
        (_signal(steps=signal_pb2.StepsPayload(count=-1)), "steps.count"),
        (_signal(steps=signal_pb2.StepsPayload(count=200_001)), "steps.count"),
        (
            _signal(steps=signal_pb2.StepsPayload(count=1, active_minutes=-1)),
            "steps.active_minutes",
        ),
        (
            _signal(steps=signal_pb2.StepsPayload(count=1, active_minutes=1441)),
            "steps.active_minutes",
        ),
        (_signal(sleep=signal_pb2.SleepPayload(asleep_minutes=1441)), "sleep.asleep_minutes"),
        (_signal(mood=signal_pb2.MoodPayload(score=0)), "mood.score"),
        (_signal(mood=signal_pb2.MoodPayload(score=6)), "mood.score"),
        (_signal(workout=signal_pb2.WorkoutPayload()), "workout.activity"),
        (
            _signal(calendar_event=signal_pb2.CalendarEventPayload(busy=True)),
            "calendar_event.event_id",
        ),
    ],
)
def test_out_of_bounds_payload_names_the_field(signal: signal_pb2.Signal, field: str) -> None:
    assert _fields(signal) == [field]


def test_tip_reaction_must_name_the_users_own_tip_and_a_reaction() -> None:
    other = signal_pb2.TipReactionPayload(
        tip="users/u_2/tips/t1", reaction=signal_pb2.TIP_REACTION_DONE
    )
    assert _fields(_signal(tip_reaction=other)) == ["tip_reaction.tip"]
    unset = signal_pb2.TipReactionPayload(tip=f"users/{USER}/tips/t1")
    assert _fields(_signal(tip_reaction=unset)) == ["tip_reaction.reaction"]


def test_identity_fields() -> None:
    signal = _signal(steps=signal_pb2.StepsPayload(count=1))
    signal.client_signal_id = ""
    assert _fields(signal) == ["client_signal_id"]
    signal.client_signal_id = "x" * 129
    assert _fields(signal) == ["client_signal_id"]
    signal.client_signal_id = "ok"
    signal.source = signal_pb2.SIGNAL_SOURCE_UNSPECIFIED
    assert _fields(signal) == ["source"]


def test_kind_must_match_the_payload() -> None:
    signal = _signal(steps=signal_pb2.StepsPayload(count=1))
    signal.kind = signal_pb2.SIGNAL_KIND_SLEEP
    assert _fields(signal) == ["sleep"]
    signal.kind = signal_pb2.SIGNAL_KIND_UNSPECIFIED
    assert _fields(signal) == ["kind"]


def test_times() -> None:
    signal = _signal(steps=signal_pb2.StepsPayload(count=1))
    signal.ClearField("start_time")
    assert _fields(signal) == ["start_time"]
    signal.start_time.CopyFrom(_ts(NOW + timedelta(days=2)))
    signal.ClearField("end_time")
    assert _fields(signal) == ["start_time"]
    signal.start_time.CopyFrom(_ts(NOW - timedelta(days=3 * 365)))
    assert _fields(signal) == ["start_time"]
    signal.start_time.CopyFrom(_ts(NOW))
    signal.end_time.CopyFrom(_ts(NOW - timedelta(minutes=1)))
    assert _fields(signal) == ["end_time"]


def test_calendar_events_may_be_planned_ahead() -> None:
    event = signal_pb2.CalendarEventPayload(event_id="e1", busy=True)
    signal = _signal(calendar_event=event)
    signal.start_time.CopyFrom(_ts(NOW + timedelta(days=30)))
    signal.end_time.CopyFrom(_ts(NOW + timedelta(days=30, hours=1)))
    assert _fields(signal) == []


def test_batch_size() -> None:
    domain.check_batch_size(1)
    domain.check_batch_size(500)
    for count in (0, 501):
        with pytest.raises(InvalidArgument) as raised:
            domain.check_batch_size(count)
        assert [f for f, _ in raised.value.violations] == ["signals"]


def test_page_token_is_bound_to_its_filters() -> None:
    request = events_service_pb2.ListSignalsRequest(parent=f"users/{USER}", page_size=2)
    query = domain.parse_list_request(request, USER)
    token = domain.page_token(query, NOW, "abc")
    request.page_token = token
    assert domain.parse_list_request(request, USER).after == (NOW, "abc")
    request.kinds.append(signal_pb2.SIGNAL_KIND_STEPS)
    with pytest.raises(InvalidArgument):
        domain.parse_list_request(request, USER)
    request.page_token = "garbage"
    with pytest.raises(InvalidArgument):
        domain.parse_list_request(request, USER)

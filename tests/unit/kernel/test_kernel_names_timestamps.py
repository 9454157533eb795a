"""Resource-name patterns and Timestamp conversions of the kernel."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from kernel.errors import InvalidArgument
from kernel.names import USER, Pattern, user_name
from kernel.timestamps import (
    datetime_of,
    optional_timestamp,
    timedelta_of,
    timestamp,
    to_datetime,
)
from tips.events.v1 import signal_pb2
from tips.recommender.v1.recommender_service_pb2 import ReactToTipRequest

pytestmark = pytest.mark.unit

TIP = Pattern("users/{user}/tips/{tip}")
CONNECTION = Pattern("users/{user}/connections/{connection}", ids={"connection": "[a-z0-9-]{1,63}"})


def test_format_and_parse_round_trip() -> None:
    name = TIP.format("u_1", "t9")
    assert name == "users/u_1/tips/t9"
    assert TIP.parse(name) == ("u_1", "t9")
    assert USER.parse_one(user_name("u_1")) == "u_1"


@pytest.mark.parametrize(
    "name",
    [
        "",
        "users/u_1",
        "users/u_1/tips/",
        "users//tips/t",
        "users/u_1/tip/t",
        "users/u_1/tips/t/extra",
        "people/u_1/tips/t",
        "users/u 1/tips/t",
        "users/u_1/tips/a/b",
    ],
)
def test_parse_refuses_other_shapes_naming_the_field(name: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        TIP.parse(name, "tip.name")
    assert caught.value.violations == [
        ("tip.name", f"must be users/{{user}}/tips/{{tip}}, got {name!r}")
    ]


def test_a_pattern_can_narrow_an_id() -> None:
    assert CONNECTION.parse("users/u/connections/fitbit-1") == ("u", "fitbit-1")
    assert CONNECTION.match("users/u/connections/Fitbit") is None


def test_format_checks_the_arity() -> None:
    with pytest.raises(TypeError):
        TIP.format("u_1")


def test_timestamps_are_aware_and_optional_fields_read_as_none() -> None:
    at = datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=1)))
    ts = timestamp(at)
    assert to_datetime(ts) == at
    assert to_datetime(ts).tzinfo is UTC
    assert optional_timestamp(None) is None
    signal = signal_pb2.Signal(start_time=ts)
    assert datetime_of(signal, "start_time") == at
    assert datetime_of(signal, "end_time") is None
    with pytest.raises(ValueError):
        timestamp(datetime(2026, 1, 1))  # naive


@pytest.mark.parametrize(
    "at",
    [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),  # before the epoch
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(
            2026, 12, 7, 19, 45, 1, 123_456, tzinfo=timezone(timedelta(hours=-7, minutes=-30))
        ),
        datetime(2026, 3, 29, 1, 30, 0, 1, tzinfo=timezone(timedelta(hours=14))),
    ],
)
def test_conversions_agree_with_protobufs_own(at: datetime) -> None:
    """The kernel's integer arithmetic gives protobuf's FromDatetime/ToDatetime numbers."""
    theirs = Timestamp()
    theirs.FromDatetime(at)
    assert timestamp(at) == theirs
    assert to_datetime(theirs) == theirs.ToDatetime(UTC) == at
    # Nanoseconds below a microsecond are cut, as ToDatetime cuts them.
    fine = Timestamp(seconds=theirs.seconds, nanos=theirs.nanos + 999)
    assert to_datetime(fine) == fine.ToDatetime(UTC)


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [
        (253_402_300_800, 0),  # 10000-01-01: past the last valid second
        (-62_135_596_801, 0),  # before 0001-01-01
        (10**12, 0),
        (0, 1_000_000_000),
        (0, -5),
    ],
)
def test_an_invalid_timestamp_is_refused_as_protobuf_refuses_it(seconds: int, nanos: int) -> None:
    """A client may send any numbers: a ValueError, as ToDatetime raises, not an
    OverflowError or a datetime shifted by the stray nanos."""
    value = Timestamp(seconds=seconds, nanos=nanos)
    with pytest.raises(ValueError, match="Timestamp is not valid"):
        value.ToDatetime(UTC)
    with pytest.raises(ValueError, match="Timestamp is not valid"):
        to_datetime(value)


def test_the_first_and_last_valid_seconds_convert() -> None:
    for seconds in (-62_135_596_800, 253_402_300_799):
        value = Timestamp(seconds=seconds, nanos=999_999_999)
        assert to_datetime(value) == value.ToDatetime(UTC)


def test_an_invalid_request_timestamp_names_its_field() -> None:
    """datetime_of is for a request's fields: the caller's error, with the field's path."""
    window = signal_pb2.Signal(start_time=Timestamp(seconds=10**12))
    with pytest.raises(InvalidArgument) as caught:
        datetime_of(window, "start_time", "time_range.start_time")
    assert caught.value.violations == [
        ("time_range.start_time", "must be a valid Timestamp (years 1-9999, nanos 0-999999999)")
    ]
    with pytest.raises(InvalidArgument) as unnamed:
        datetime_of(window, "start_time")
    assert [field for field, _ in unnamed.value.violations] == ["start_time"]


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(90, 0), (0, 1_500), (-3, -999_999_999), (0, -1_500), (315_576_000_000, 999_999_999)],
)
def test_a_duration_converts_as_protobufs_own(seconds: int, nanos: int) -> None:
    request = ReactToTipRequest(snooze_duration=Duration(seconds=seconds, nanos=nanos))
    assert timedelta_of(request, "snooze_duration") == request.snooze_duration.ToTimedelta()


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(10**15, 0), (315_576_000_001, 0), (1, -5), (-1, 5), (0, 1_000_000_000)],
)
def test_an_invalid_duration_names_its_field(seconds: int, nanos: int) -> None:
    request = ReactToTipRequest(snooze_duration=Duration(seconds=seconds, nanos=nanos))
    with pytest.raises(InvalidArgument) as caught:
        timedelta_of(request, "snooze_duration", "reaction.snooze_duration")
    assert [field for field, _ in caught.value.violations] == ["reaction.snooze_duration"]


def test_an_unset_duration_is_none() -> None:
    assert timedelta_of(ReactToTipRequest(), "snooze_duration") is None

"""A mesh process consumes only the events its protos declare (its NATS read grant)."""

from __future__ import annotations

import pytest

from kernel.bus import BusError
from kernel.bus_permissions import consumed_events, consumed_streams
from kernel.consumers import check_declared
from tips.auth.v1 import events_pb2 as auth_events
from tips.events.v1 import events_pb2 as signal_events
from tips.profile.v1 import events_pb2 as profile_events

pytestmark = pytest.mark.unit


def test_the_declarations_are_read_from_the_service_protos() -> None:
    assert "tips.profile.v1.UserDeleted" in consumed_events("notifier")
    assert consumed_events("gateway") == {"tips.auth.v1.SessionRevoked"}
    # Its own stream too: each replica follows the others' decisions and rewards.
    assert consumed_streams("recommender") == [
        "TIPS_EVENTS",
        "TIPS_ML_PIPELINES",
        "TIPS_PROFILE",
        "TIPS_RECOMMENDER",
    ]
    assert consumed_streams("operator") == []  # a tool, no service: nothing


def test_a_declared_event_may_be_consumed() -> None:
    check_declared("recommender", signal_events.SignalRecorded)
    check_declared("gateway", auth_events.SessionRevoked)


def test_an_undeclared_event_fails_at_once_naming_the_option() -> None:
    with pytest.raises(BusError) as err:
        check_declared("notifier", signal_events.SignalRecorded)
    assert "tips.events.v1.SignalRecorded" in str(err.value)
    assert "tips.options.v1.consumes" in str(err.value)


def test_processes_outside_the_mesh_are_not_checked() -> None:
    check_declared("profile-test", profile_events.ConsentChanged)  # a test's own bus

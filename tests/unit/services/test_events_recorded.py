"""The hand-written SignalRecorded bytes equal what protobuf writes."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from services.events.recorded import recorded_bytes
from tips.events.v1 import events_pb2, signal_pb2


def _signal(name: str, note: str) -> signal_pb2.Signal:
    signal = signal_pb2.Signal(
        name=name,
        client_signal_id="c" * 120,  # lengths above 127 need two-byte varints
        kind=signal_pb2.SIGNAL_KIND_CALENDAR_EVENT,
        source=signal_pb2.SIGNAL_SOURCE_CONNECTOR,
        connection="users/u1/connections/google",
        start_time=Timestamp(seconds=1_700_000_000, nanos=5000),
        ingest_time=Timestamp(seconds=1_700_000_100, nanos=123456000),
        calendar_event=signal_pb2.CalendarEventPayload(event_id=note),
    )
    return signal


def test_recorded_bytes_equal_protobuf_serialization() -> None:
    for note in ("e", "x" * 300, "é" * 2000):
        name = "users/u1/signals/0123456789abcdef"
        signal = _signal(name, note)
        expected = events_pb2.SignalRecorded(event_id=name, user="users/u1", signal=signal)
        expected.occur_time.CopyFrom(signal.ingest_time)
        got = recorded_bytes(
            name, "users/u1", signal.ingest_time.SerializeToString(), signal.SerializeToString()
        )
        assert got == expected.SerializeToString()
        assert events_pb2.SignalRecorded.FromString(got) == expected


def test_zero_ingest_time_is_still_present() -> None:
    signal = _signal("users/u1/signals/a", "e")
    signal.ingest_time.Clear()
    expected = events_pb2.SignalRecorded(event_id="users/u1/signals/a", user="users/u1")
    expected.signal.CopyFrom(signal)
    expected.occur_time.CopyFrom(Timestamp())
    got = recorded_bytes("users/u1/signals/a", "users/u1", b"", signal.SerializeToString())
    assert got == expected.SerializeToString()

"""The SignalRecorded payload, built from bytes the ingest already has. Pure.

Ingest serializes each stored signal once (the ``signals.payload`` column).
The event wrapping it is written with ``kernel.wire`` from those bytes
instead of building a ``SignalRecorded`` and serializing the signal a second
time; its fields go in field-number order, as ``SerializeToString`` writes
them, so the bytes are identical (tests/unit/services/test_events_recorded.py).
"""

from __future__ import annotations

from kernel.wire import length_delimited

# SignalRecorded's field numbers.
_EVENT_ID, _OCCUR_TIME, _USER, _SIGNAL = 1, 2, 3, 4


def recorded_bytes(name: str, user: str, ingest_time: bytes, signal: bytes) -> bytes:
    """``SignalRecorded(event_id=name, occur_time=…, user=user, signal=…)`` serialized.

    ``ingest_time`` and ``signal`` are the serialized Timestamp and stored Signal.
    """
    return b"".join(
        (
            length_delimited(_EVENT_ID, name.encode()),
            length_delimited(_OCCUR_TIME, ingest_time),
            length_delimited(_USER, user.encode()),
            length_delimited(_SIGNAL, signal),
        )
    )

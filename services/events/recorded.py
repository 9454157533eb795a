"""The SignalRecorded outbox payload and headers, built from bytes the ingest already has.

Ingest serializes each stored signal once (the ``signals.payload`` column).
The event wrapping it is written by hand from those bytes instead of
building a ``SignalRecorded`` and serializing the signal a second time: a
protobuf message is the concatenation of its fields (tag, length, bytes),
and this writes them in field-number order, as ``SerializeToString`` does,
so the bytes are identical (tests/unit/services/test_events_recorded.py).
The headers differ per row only by ``Nats-Msg-Id``: the rest (content type,
trace context) is encoded once per batch.
"""

from __future__ import annotations

import json

from kernel.bus import MSG_ID_HEADER, message_headers
from tips.events.v1 import events_pb2

# Tags (field number << 3 | wire type 2, length-delimited) of SignalRecorded's fields.
_EVENT_ID, _OCCUR_TIME, _USER, _SIGNAL = b"\x0a", b"\x12", b"\x1a", b"\x22"


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, value: bytes) -> bytes:
    return tag + _varint(len(value)) + value


def recorded_bytes(name: str, user: str, ingest_time: bytes, signal: bytes) -> bytes:
    """``SignalRecorded(event_id=name, occur_time=…, user=user, signal=…)`` serialized.

    ``ingest_time`` and ``signal`` are the serialized Timestamp and stored Signal.
    """
    return b"".join(
        (
            _field(_EVENT_ID, name.encode()),
            _field(_OCCUR_TIME, ingest_time),
            _field(_USER, user.encode()),
            _field(_SIGNAL, signal),
        )
    )


class HeaderTemplate:
    """The JSON headers of the batch's SignalRecorded rows, msg id filled in per row."""

    def __init__(self) -> None:
        # Captures the caller's trace context, like kernel.outbox.enqueue does.
        common = message_headers(events_pb2.SignalRecorded, "-")
        del common[MSG_ID_HEADER]
        head = json.dumps(common)[:-1] + (", " if common else "")
        self._prefix = head + json.dumps(MSG_ID_HEADER) + ": "

    def json(self, msg_id: str) -> str:
        return self._prefix + json.dumps(msg_id) + "}"

"""``google.protobuf.Timestamp`` <-> aware ``datetime``, one way for every service.

Protobuf's own ``FromDatetime`` treats a naive datetime as UTC and mutates in
place; these return new messages, refuse naive datetimes (a local wall-clock
time stored as UTC is a silent bug) and read unset fields as None.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

__all__ = ["datetime_of", "optional_timestamp", "timestamp", "to_datetime"]


def timestamp(value: datetime) -> Timestamp:
    """``value`` (timezone-aware) as a Timestamp."""
    if value.tzinfo is None:
        raise ValueError("timestamp() needs a timezone-aware datetime")
    out = Timestamp()
    out.FromDatetime(value.astimezone(UTC))
    return out


def optional_timestamp(value: datetime | None) -> Timestamp | None:
    """``timestamp(value)``, None for None (to leave an optional field unset)."""
    return None if value is None else timestamp(value)


def to_datetime(value: Timestamp) -> datetime:
    """The Timestamp as an aware UTC datetime."""
    return value.ToDatetime(UTC)


def datetime_of(message: Message, field: str) -> datetime | None:
    """``message.field`` as an aware UTC datetime, None when the field is unset."""
    if not message.HasField(field):
        return None
    found: Timestamp = getattr(message, field)
    return found.ToDatetime(UTC)

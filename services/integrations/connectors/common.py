"""Small helpers connectors share: timestamps and stable ids."""

from __future__ import annotations

import hashlib
from datetime import datetime

from services.integrations.connectors.base import MalformedRecord

MAX_CLIENT_ID = 128


def parse_rfc3339(value: object, what: str) -> datetime:
    if not isinstance(value, str) or not value:
        raise MalformedRecord(f"{what} is missing")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise MalformedRecord(f"{what} is not an RFC 3339 time") from None
    if parsed.tzinfo is None:
        raise MalformedRecord(f"{what} has no UTC offset")
    return parsed


def client_id(prefix: str, *parts: str) -> str:
    """A stable client_signal_id; hashed when the provider's ids are long."""
    value = ":".join((prefix, *parts))
    if len(value) <= MAX_CLIENT_ID:
        return value
    return f"{prefix}:h:{hashlib.sha256(value.encode()).hexdigest()}"

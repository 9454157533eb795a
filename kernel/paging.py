"""Keyset page tokens for List RPCs (AIP-158), one implementation for every service.

A token is opaque to clients: urlsafe base64 of JSON holding the position
after the last item (its sort time and id) and a fingerprint of the request's
filters. A token presented with other filters, or garbage, is rejected with
INVALID_ARGUMENT naming ``page_token``, as AIP-158 asks.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime

from kernel.errors import InvalidArgument

_NOT_OURS = "is not a token of this listing (the filters changed, or it was altered)"


@dataclass(frozen=True)
class Cursor:
    """The position after the last item of a page: its sort time and its id."""

    time: datetime
    id: str


def page_size(requested: int, *, default: int, maximum: int, field: str = "page_size") -> int:
    """The page size to use: ``default`` for 0, ``InvalidArgument`` when out of range."""
    if requested < 0 or requested > maximum:
        raise InvalidArgument([(field, f"must be between 0 and {maximum}, got {requested}")])
    return requested or default


def encode(cursor: Cursor, fingerprint: str) -> str:
    """The token that resumes after ``cursor`` for a request with ``fingerprint``."""
    data = {"f": fingerprint, "t": cursor.time.isoformat(), "i": cursor.id}
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


def decode(token: str, fingerprint: str, field: str = "page_token") -> Cursor | None:
    """The cursor in ``token`` (None for an empty token); the filters must match."""
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        cursor = Cursor(datetime.fromisoformat(data["t"]), str(data["i"]))
        same = data["f"] == fingerprint
    except (ValueError, KeyError, TypeError):
        same = False
    if not same:
        raise InvalidArgument([(field, _NOT_OURS)])
    return cursor

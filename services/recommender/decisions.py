"""Request checks of the tip RPCs: counts, names, history tokens, reaction ids. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from kernel import paging
from kernel.errors import InvalidArgument
from kernel.names import Pattern

MAX_TIPS = 5
DEFAULT_HISTORY = 20
MAX_HISTORY = 100


def tip_count(page_size: int) -> int:
    """ListTips: default 1, at most 5 (larger values are lowered)."""
    if page_size < 0:
        raise InvalidArgument([("page_size", "must not be negative")])
    return min(page_size or 1, MAX_TIPS)


def history_size(page_size: int) -> int:
    if page_size < 0:
        raise InvalidArgument([("page_size", "must not be negative")])
    return min(page_size or DEFAULT_HISTORY, MAX_HISTORY)


TIP = Pattern("users/{user}/tips/{tip}")


def parse_tip_name(name: str, field: str = "name") -> tuple[str, str]:
    """``(user, tip)`` of ``users/{user}/tips/{tip}``; InvalidArgument otherwise."""
    user_id, tip_id = TIP.parse(name, field)
    return user_id, tip_id


def _states_fingerprint(states: Sequence[int]) -> str:
    return ",".join(str(state) for state in sorted(states))


def history_token(states: Sequence[int], decide_time: datetime, tip_id: str) -> str:
    return paging.encode(paging.Cursor(decide_time, tip_id), _states_fingerprint(states))


def parse_history_token(token: str, states: Sequence[int]) -> tuple[datetime, str] | None:
    cursor = paging.decode(token, _states_fingerprint(states))
    return (cursor.time, cursor.id) if cursor else None


def reaction_signal_id(request_id: str, tip_name: str, reaction: int) -> str:
    """The forwarded signal's client_signal_id: the request id, else tip + reaction."""
    if request_id:
        if len(request_id) > 128:
            raise InvalidArgument([("request_id", "at most 128 characters")])
        return request_id
    return f"react:{tip_name.rsplit('/', 1)[-1]}:{reaction}"

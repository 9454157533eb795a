"""The inbound RPC's deadline, so downstream calls never outlive it.

The server interceptor records when the call being served must finish;
``kernel.clients`` gives each downstream call at most the time left.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

# Absolute time.monotonic() by which the inbound call must finish.
_deadline: ContextVar[float | None] = ContextVar("tips_deadline", default=None)


def remaining() -> float | None:
    """Seconds left before the inbound deadline; None when there is none."""
    deadline = _deadline.get()
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


def set_remaining(seconds: float | None) -> None:
    """Set the deadline for the rest of the current context (the interceptor)."""
    _deadline.set(None if seconds is None else time.monotonic() + seconds)


@contextmanager
def deadline_in(seconds: float | None) -> Iterator[None]:
    """Run a block under a deadline ``seconds`` from now (None: no deadline)."""
    value = None if seconds is None else time.monotonic() + seconds
    token = _deadline.set(value)
    try:
        yield
    finally:
        _deadline.reset(token)


def within(cap: float) -> float:
    """Seconds a handler may spend waiting or retrying: ``cap``, or less when the inbound
    deadline is nearer (a little of it is kept to send the answer back)."""
    left = remaining()
    if left is None:
        return max(0.0, cap)
    return max(0.0, min(cap, left - min(0.5, left / 4)))

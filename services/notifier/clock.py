"""The notifier's clock: what "now" is for queueing, quiet hours and digests.

Injected (``build(runtime, clock=...)``) so tests can move a user's day
forward without waiting for it; production uses the system clock.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)

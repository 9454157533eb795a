"""The daily digest's pure rules: when a held tip is due, and the digest's text. No I/O.

A tip is held for the first digest time, in the user's zone, at or after it
may be delivered (``kernel.localtime.next_time_of_day``: a delivery time the
spring transition skips moves forward by the gap, a repeated one counts once,
at its first occurrence).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from kernel import localtime
from services.notifier import domain
from tips.profile.v1 import profile_pb2

# FCM refuses messages over 4096 bytes (notification, data and the rest):
# the body leaves room for the title, data and JSON framing.
PUSH_BODY_BYTES = 2048
# A mail can be longer, but a digest is read on a phone too.
EMAIL_BODY_BYTES = 16 * 1024
_BULLET = "\N{BULLET} "
_ELLIPSIS = "\N{HORIZONTAL ELLIPSIS}"


def delivery_second(profile: profile_pb2.Profile) -> int | None:
    """Seconds after local midnight the digest goes out; None when the digest is off."""
    digest = profile.digest
    if not digest.enabled or not digest.HasField("delivery_time"):
        return None
    t = digest.delivery_time
    return int(t.hours * 3600 + t.minutes * 60 + t.seconds)


def due(hold_from: datetime, profile: profile_pb2.Profile) -> datetime | None:
    """When a tip that may go from ``hold_from`` is delivered in the digest; None when off."""
    second = delivery_second(profile)
    if second is None:
        return None
    return localtime.next_time_of_day(hold_from, localtime.zone(profile.time_zone), second)


@dataclass(frozen=True)
class Item:
    """One tip of a digest, as it was asked for."""

    title: str
    body: str


def _fit(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` UTF-8 bytes (on a character boundary), marked when cut."""
    if len(text.encode()) <= limit:
        return text
    room = max(limit - len(_ELLIPSIS.encode()), 0)
    return text.encode()[:room].decode(errors="ignore").rstrip() + _ELLIPSIS


def text(items: Sequence[Item], channel: int) -> tuple[str, str]:
    """(title, body) of a digest of ``items`` (oldest first) on ``channel``.

    Every tip is listed with its title and body while the body stays within
    the channel's size (PUSH_BODY_BYTES, EMAIL_BODY_BYTES); the first tip is
    cut to fit if it must, and the rest are counted in a last line. The app
    lists them all (``ListNotifications`` with ``digest``).
    """
    count = len(items)
    title = f"Your daily tips: {count} tip" + ("" if count == 1 else "s")
    limit = PUSH_BODY_BYTES if channel == domain.PUSH else EMAIL_BODY_BYTES
    sep = "\n" if channel == domain.PUSH else "\n\n"
    lines: list[str] = []
    used = 0
    for i, item in enumerate(items):
        line = (
            f"{_BULLET}{item.title}: {item.body}"
            if channel == domain.PUSH
            else f"{item.title}\n{item.body}"
        )
        left = count - i - 1
        # Keep room for the "and N more" line unless this is the last tip.
        reserve = len(f"{sep}{_ELLIPSIS}and {count} more in the app".encode()) if left else 0
        cost = len(line.encode()) + (len(sep.encode()) if lines else 0)
        if used + cost + reserve > limit:
            rest = count - i
            if not lines:  # never an empty digest: the first tip, cut
                lines.append(_fit(line, limit - reserve))
                rest -= 1
            if rest:
                lines.append(f"{_ELLIPSIS}and {rest} more in the app")
            break
        lines.append(line)
        used += cost
    return title, sep.join(lines)

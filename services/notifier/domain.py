"""The notifier's pure logic: names, input checks, channel choice. No I/O.

Local time (quiet hours, local days) is ``kernel.localtime``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from kernel.errors import InvalidArgument
from kernel.identity import parse_user
from kernel.names import Pattern
from kernel.timestamps import datetime_of
from tips.notifier.v1 import device_pb2, notification_pb2
from tips.notifier.v1 import notifier_service_pb2 as pb
from tips.profile.v1 import consent_pb2, user_context_pb2

PUSH = notification_pb2.NOTIFICATION_CHANNEL_PUSH
EMAIL = notification_pb2.NOTIFICATION_CHANNEL_EMAIL

QUEUED = notification_pb2.NOTIFICATION_STATE_QUEUED
SENT = notification_pb2.NOTIFICATION_STATE_SENT
DELIVERED = notification_pb2.NOTIFICATION_STATE_DELIVERED
SUPPRESSED = notification_pb2.NOTIFICATION_STATE_SUPPRESSED
FAILED = notification_pb2.NOTIFICATION_STATE_FAILED
HELD = notification_pb2.NOTIFICATION_STATE_HELD
# States that count as "delivered or on its way" for dedupe and caps (a tip
# held for the digest will reach the user: it counts too).
LIVE_STATES = (QUEUED, SENT, DELIVERED, HELD)

TIP = notification_pb2.NOTIFICATION_KIND_TIP
DIGEST = notification_pb2.NOTIFICATION_KIND_DIGEST

QUIET_HOURS = notification_pb2.SUPPRESSION_REASON_QUIET_HOURS
DUPLICATE = notification_pb2.SUPPRESSION_REASON_DUPLICATE
FREQUENCY_CAP = notification_pb2.SUPPRESSION_REASON_FREQUENCY_CAP
NO_CONSENT = notification_pb2.SUPPRESSION_REASON_NO_CONSENT
NO_CHANNEL = notification_pb2.SUPPRESSION_REASON_NO_CHANNEL

ACTIVE = device_pb2.DEVICE_STATE_ACTIVE
PLATFORMS = (
    device_pb2.DEVICE_PLATFORM_IOS,
    device_pb2.DEVICE_PLATFORM_ANDROID,
    device_pb2.DEVICE_PLATFORM_WEB,
)
_CONSENT_OF: dict[int, int] = {
    PUSH: consent_pb2.CONSENT_PURPOSE_PUSH_NOTIFICATIONS,
    EMAIL: consent_pb2.CONSENT_PURPOSE_EMAIL_NOTIFICATIONS,
}

_ID = re.compile(r"^[a-z0-9-]{1,63}$")
_PART = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_KEY_MAX = 200
TITLE_MAX = 100
BODY_MAX = 500
PUSH_TOKEN_MAX = 4096
DATA_MAX = 32  # keys; FCM caps the whole payload at 4 KB anyway


# --- names ---------------------------------------------------------------------------------


DEVICE = Pattern("users/{user}/devices/{id}", ids={"id": _PART.pattern[1:-1]})
NOTIFICATION = Pattern("users/{user}/notifications/{id}", ids={"id": _PART.pattern[1:-1]})


def device_name(user_id: str, device_id: str) -> str:
    return DEVICE.format(user_id, device_id)


def notification_name(user_id: str, notification_id: str) -> str:
    return NOTIFICATION.format(user_id, notification_id)


# --- input checks ----------------------------------------------------------------------------


def check_device(request: pb.CreateDeviceRequest) -> None:
    """Every problem of a CreateDevice request at once, naming the fields."""
    bad: list[tuple[str, str]] = []
    if not request.HasField("device"):
        raise InvalidArgument([("device", "is required")])
    d = request.device
    if not d.push_token.strip():
        bad.append(("device.push_token", "is required"))
    elif len(d.push_token) > PUSH_TOKEN_MAX:
        bad.append(("device.push_token", f"at most {PUSH_TOKEN_MAX} characters"))
    if d.platform not in PLATFORMS:
        bad.append(("device.platform", "must be DEVICE_PLATFORM_IOS, _ANDROID or _WEB"))
    if len(d.app_version) > 32:
        bad.append(("device.app_version", "at most 32 characters"))
    if len(d.display_name) > 100:
        bad.append(("device.display_name", "at most 100 characters"))
    if request.device_id and not _ID.match(request.device_id):
        bad.append(("device_id", "must be 1 to 63 characters of [a-z0-9-]"))
    if bad:
        raise InvalidArgument(bad)


@dataclass(frozen=True)
class SendInput:
    """A checked SendNotification request."""

    user_id: str
    tip: str
    title: str
    body: str
    dedupe_key: str
    channels: tuple[int, ...]
    not_before: datetime | None
    expire: datetime | None
    data: dict[str, str]
    request_id: str
    urgent: bool = False


def check_send(request: pb.SendNotificationRequest, now: datetime) -> SendInput:
    """A SendNotification request checked, every problem at once."""
    user_id = parse_user(request.parent, "parent")
    bad: list[tuple[str, str]] = []
    tip_parts = request.tip.split("/")
    if not request.tip:
        bad.append(("tip", "is required"))
    elif len(tip_parts) != 4 or tip_parts[:3] != ["users", user_id, "tips"] or not tip_parts[3]:
        bad.append(("tip", f"must be a tip of {request.parent}: users/{user_id}/tips/{{tip}}"))
    if not request.title.strip():
        bad.append(("title", "is required"))
    elif len(request.title) > TITLE_MAX:
        bad.append(("title", f"at most {TITLE_MAX} characters"))
    if not request.body.strip():
        bad.append(("body", "is required"))
    elif len(request.body) > BODY_MAX:
        bad.append(("body", f"at most {BODY_MAX} characters"))
    if len(request.dedupe_key) > _KEY_MAX:
        bad.append(("dedupe_key", f"at most {_KEY_MAX} characters"))
    for i, channel in enumerate(request.channels):
        if channel not in (PUSH, EMAIL):
            bad.append((f"channels[{i}]", "must be NOTIFICATION_CHANNEL_PUSH or _EMAIL"))
    if len(set(request.channels)) != len(request.channels):
        bad.append(("channels", "must not repeat a channel"))
    not_before = datetime_of(request, "not_before_time")
    expire = datetime_of(request, "expire_time")
    if expire is not None and expire <= now:
        bad.append(("expire_time", "must be in the future"))
    if expire is not None and not_before is not None and expire <= not_before:
        bad.append(("expire_time", "must be after not_before_time"))
    if len(request.data) > DATA_MAX:
        bad.append(("data", f"at most {DATA_MAX} entries"))
    for key in request.data:
        if not key or key.startswith(("google.", "gcm.")) or key in ("from", "message_type"):
            bad.append((f"data[{key!r}]", "is a key FCM reserves"))
    if len(request.request_id) > 64:
        bad.append(("request_id", "at most 64 characters"))
    if bad:
        raise InvalidArgument(bad)
    return SendInput(
        user_id=user_id,
        tip=request.tip,
        title=request.title,
        body=request.body,
        dedupe_key=request.dedupe_key or request.tip,
        channels=tuple(request.channels) or (PUSH,),
        not_before=not_before,
        expire=expire,
        data=dict(request.data),
        request_id=request.request_id,
        urgent=request.urgent,
    )


# --- channel choice ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Reach:
    """What the notifier knows about reaching the user."""

    has_device: bool
    email: str


def allowed_channels(
    context: user_context_pb2.UserContext | None, wanted: Sequence[int]
) -> list[int]:
    """The wanted channels the user consented to AND enabled in the profile, in order."""
    if context is None:
        return []
    granted = {int(p) for p in context.granted_purposes}
    enabled = {
        int(PUSH): context.profile.channels.push_enabled,
        int(EMAIL): context.profile.channels.email_enabled,
    }
    return [c for c in wanted if _CONSENT_OF.get(c) in granted and enabled.get(c, False)]


def choose_channel(allowed: Sequence[int], reach: Reach) -> int | None:
    """The first allowed channel that reaches the user."""
    for channel in allowed:
        if channel == PUSH and reach.has_device:
            return channel
        if channel == EMAIL and reach.email:
            return channel
    return None


def backoff(attempt: int, base: float, maximum: float, retry_after: float | None = None) -> float:
    """Seconds before try ``attempt + 1``: exponential, at least the server's Retry-After."""
    delay: float = min(base * (2.0 ** max(attempt - 1, 0)), maximum)
    return max(delay, min(retry_after or 0.0, maximum))

"""Pure rules of the events service: signal validation, names, page tokens.

No I/O here: the servicer parses and checks the caller, these functions judge
the data, the store persists it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from kernel import paging
from kernel.errors import InvalidArgument
from kernel.names import Pattern
from kernel.timestamps import datetime_of, timestamp
from tips.events.v1 import events_service_pb2, signal_pb2
from tips.profile.v1 import consent_pb2

MAX_BATCH = 500
MAX_CLIENT_SIGNAL_ID = 128
# Connectors backfill history; the phone may be a little ahead of the server clock.
MAX_PAST = timedelta(days=2 * 365)
MAX_FUTURE = timedelta(hours=24)
# Calendar events are planned ahead.
MAX_FUTURE_CALENDAR = timedelta(days=2 * 365)
MAX_SPAN = timedelta(days=31)

MAX_STEPS = 200_000
MAX_ACTIVE_MINUTES = 1440
MAX_SLEEP_MINUTES = 1440

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

K = signal_pb2.SignalKind
# The payload field each kind must carry (the proto's `payload` oneof).
PAYLOAD_OF_KIND: dict[int, str] = {
    K.SIGNAL_KIND_STEPS: "steps",
    K.SIGNAL_KIND_SLEEP: "sleep",
    K.SIGNAL_KIND_CALENDAR_EVENT: "calendar_event",
    K.SIGNAL_KIND_FOCUS_SESSION: "focus_session",
    K.SIGNAL_KIND_WORKOUT: "workout",
    K.SIGNAL_KIND_TIP_REACTION: "tip_reaction",
    K.SIGNAL_KIND_MOOD: "mood",
}
# The profile consent purpose each kind needs before it is stored (IngestResult
# error CONSENT_REQUIRED otherwise). Focus sessions and tip reactions are the
# app's own data and need none.
P = consent_pb2.ConsentPurpose
PURPOSE_OF_KIND: dict[int, int] = {
    K.SIGNAL_KIND_STEPS: P.CONSENT_PURPOSE_FITNESS_DATA_FOR_TIPS,
    K.SIGNAL_KIND_WORKOUT: P.CONSENT_PURPOSE_FITNESS_DATA_FOR_TIPS,
    K.SIGNAL_KIND_SLEEP: P.CONSENT_PURPOSE_SLEEP_DATA_FOR_TIPS,
    K.SIGNAL_KIND_CALENDAR_EVENT: P.CONSENT_PURPOSE_CALENDAR_DATA_FOR_TIPS,
    K.SIGNAL_KIND_MOOD: P.CONSENT_PURPOSE_MOOD_DATA_FOR_TIPS,
}


def purpose_of_kind(kind: int) -> int | None:
    """The consent purpose a signal of ``kind`` needs, None when it needs none."""
    return PURPOSE_OF_KIND.get(kind)


_ID = re.compile(r"^[A-Za-z0-9_.~-]{1,128}$")
# Known enum values, computed once (``EnumTypeWrapper.values()`` builds a list per call).
_SOURCES = frozenset(signal_pb2.SignalSource.values())
_REACTIONS = frozenset(signal_pb2.TipReaction.values())

Violations = list[tuple[str, str]]


SIGNAL = Pattern("users/{user}/signals/{signal}")
# Another resource of the same user a signal may point at (its connection, its tip).
CONNECTION = Pattern("users/{user}/connections/{id}", ids={"id": _ID.pattern[1:-1]})
TIP = Pattern("users/{user}/tips/{id}", ids={"id": _ID.pattern[1:-1]})


def signal_name(user_id: str, signal_id: str) -> str:
    return SIGNAL.format(user_id, signal_id)


def parse_signal_name(name: str, field: str = "name") -> tuple[str, str]:
    """``(user, signal)`` of ``users/{user}/signals/{signal}``; InvalidArgument otherwise."""
    user_id, signal_id = SIGNAL.parse(name, field)
    return user_id, signal_id


def is_child_name(name: str, user_id: str, pattern: Pattern) -> bool:
    found = pattern.match(name)
    return found is not None and found[0] == user_id


def check_batch_size(count: int) -> None:
    if count < 1:
        raise InvalidArgument([("signals", "at least one signal is required")])
    if count > MAX_BATCH:
        raise InvalidArgument([("signals", f"at most {MAX_BATCH} signals per batch, got {count}")])


def check_batch_limit(count: int, limit: int, field: str = "signals") -> None:
    """``check_batch_size`` with a configured limit."""
    if count < 1:
        raise InvalidArgument([(field, "at least one signal is required")])
    if count > limit:
        raise InvalidArgument([(field, f"at most {limit} signals per batch, got {count}")])


def validate_signal(
    signal: signal_pb2.Signal, user_id: str, now: datetime, max_bytes: int = 4096
) -> Violations:
    """Everything wrong with one ingest item, fields named relative to the item."""
    v: Violations = []
    size = signal.ByteSize()
    if size > max_bytes:
        # Too big to judge further: a flood of huge items must stay cheap to refuse.
        return [("signal", f"the signal is {size} bytes serialized, at most {max_bytes} allowed")]
    _check_identity(signal, user_id, v)
    _check_times(signal, now, v)
    _check_payload(signal, user_id, v)
    return v


def validate_connector_signal(
    signal: signal_pb2.Signal, user_id: str, now: datetime, max_bytes: int = 4096
) -> Violations:
    """``validate_signal`` plus the connector rules: source CONNECTOR, connection set."""
    v = validate_signal(signal, user_id, now, max_bytes)
    if signal.source != signal_pb2.SIGNAL_SOURCE_CONNECTOR and not any(f == "source" for f, _ in v):
        v.append(("source", "must be SIGNAL_SOURCE_CONNECTOR for connector signals"))
    return v


def _check_identity(signal: signal_pb2.Signal, user_id: str, v: Violations) -> None:
    if not signal.client_signal_id:
        v.append(("client_signal_id", "is required"))
    elif len(signal.client_signal_id) > MAX_CLIENT_SIGNAL_ID:
        v.append(("client_signal_id", f"at most {MAX_CLIENT_SIGNAL_ID} characters"))
    if signal.source not in _SOURCES or not signal.source:
        v.append(("source", "is required (PHONE, CONNECTOR or APP)"))
    if signal.connection and not is_child_name(signal.connection, user_id, CONNECTION):
        v.append(("connection", f"must be users/{user_id}/connections/{{connection}}"))
    if signal.source == signal_pb2.SIGNAL_SOURCE_CONNECTOR and not signal.connection:
        v.append(("connection", "is required for connector signals"))


def _micros(value: Timestamp) -> int:
    return value.seconds * 1_000_000 + value.nanos // 1000


def _check_times(signal: signal_pb2.Signal, now: datetime, v: Violations) -> None:
    if not signal.HasField("start_time"):
        v.append(("start_time", "is required"))
        return
    # Integer microseconds: no datetime per item, and no ValueError for a
    # Timestamp outside datetime's range (it is simply out of bounds).
    now_us = _micros_of(now)
    start = _micros(signal.start_time)
    calendar = signal.kind == _CALENDAR  # a module constant: K.X is a slow lookup
    if start < now_us - _MAX_PAST_US:
        v.append(("start_time", f"is more than {MAX_PAST.days} days in the past"))
    elif start > now_us + (_MAX_FUTURE_CALENDAR_US if calendar else _MAX_FUTURE_US):
        ahead = MAX_FUTURE_CALENDAR if calendar else MAX_FUTURE
        v.append(("start_time", f"is more than {_span(ahead)} in the future"))
    if signal.HasField("end_time"):
        end = _micros(signal.end_time)
        if end < start:
            v.append(("end_time", "must not be before start_time"))
        elif end - start > _MAX_SPAN_US:
            v.append(("end_time", f"the period may span at most {MAX_SPAN.days} days"))


_CALENDAR = signal_pb2.SIGNAL_KIND_CALENDAR_EVENT
_MICROSECOND = timedelta(microseconds=1)
_MAX_PAST_US = MAX_PAST // _MICROSECOND
_MAX_FUTURE_US = MAX_FUTURE // _MICROSECOND
_MAX_FUTURE_CALENDAR_US = MAX_FUTURE_CALENDAR // _MICROSECOND
_MAX_SPAN_US = MAX_SPAN // _MICROSECOND
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros_of(value: datetime) -> int:
    return (value - _EPOCH) // _MICROSECOND


def _span(delta: timedelta) -> str:
    return f"{delta.days} days" if delta.days else f"{int(delta.total_seconds() // 3600)} hours"


def _check_payload(signal: signal_pb2.Signal, user_id: str, v: Violations) -> None:
    set_payload = signal.WhichOneof("payload")
    expected = PAYLOAD_OF_KIND.get(signal.kind)
    if expected is None:
        v.append(("kind", "is required and must be a known kind"))
        if set_payload is None:
            v.append(("payload", "exactly one payload must be set"))
        return
    if set_payload != expected:
        got = set_payload or "none"
        v.append((expected, f"kind {K.Name(signal.kind)} needs the {expected} payload, got {got}"))
        return
    if expected == "steps":
        if not 0 <= signal.steps.count <= MAX_STEPS:
            v.append(("steps.count", f"must be between 0 and {MAX_STEPS}"))
        if not 0 <= signal.steps.active_minutes <= MAX_ACTIVE_MINUTES:
            v.append(("steps.active_minutes", f"must be between 0 and {MAX_ACTIVE_MINUTES}"))
    elif expected == "sleep":
        if not 0 <= signal.sleep.asleep_minutes <= MAX_SLEEP_MINUTES:
            v.append(("sleep.asleep_minutes", f"must be between 0 and {MAX_SLEEP_MINUTES}"))
        if not 0 <= signal.sleep.score <= 100:
            v.append(("sleep.score", "must be between 0 and 100"))
    elif expected == "calendar_event":
        _check_calendar(signal.calendar_event, v)
    elif expected == "workout":
        _check_workout(signal.workout, v)
    elif expected == "tip_reaction":
        _check_reaction(signal.tip_reaction, user_id, v)
    elif expected == "mood" and not 1 <= signal.mood.score <= 5:
        v.append(("mood.score", "must be between 1 and 5"))


def _check_calendar(event: signal_pb2.CalendarEventPayload, v: Violations) -> None:
    if not event.event_id:
        v.append(("calendar_event.event_id", "is required"))
    elif len(event.event_id) > 256:
        v.append(("calendar_event.event_id", "at most 256 characters"))
    if event.attendee_count < 0:
        v.append(("calendar_event.attendee_count", "must not be negative"))


def _check_workout(workout: signal_pb2.WorkoutPayload, v: Violations) -> None:
    if not workout.activity:
        v.append(("workout.activity", "is required"))
    elif len(workout.activity) > 64:
        v.append(("workout.activity", "at most 64 characters"))
    if not 0 <= workout.kilocalories <= 20_000:
        v.append(("workout.kilocalories", "must be between 0 and 20000"))
    if not 0 <= workout.distance_meters <= 1_000_000:
        v.append(("workout.distance_meters", "must be between 0 and 1000000"))


def _check_reaction(reaction: signal_pb2.TipReactionPayload, user_id: str, v: Violations) -> None:
    if not is_child_name(reaction.tip, user_id, TIP):
        v.append(("tip_reaction.tip", f"must be a tip of the user, users/{user_id}/tips/{{tip}}"))
    if (
        reaction.reaction not in _REACTIONS
        or reaction.reaction == signal_pb2.TIP_REACTION_UNSPECIFIED
    ):
        v.append(("tip_reaction.reaction", "is required (DONE, SNOOZE or DISMISS)"))
    if reaction.HasField("snooze_until") and reaction.reaction != signal_pb2.TIP_REACTION_SNOOZE:
        v.append(("tip_reaction.snooze_until", "only a SNOOZE reaction takes snooze_until"))


def stored_signal(
    signal: signal_pb2.Signal, user_id: str, signal_id: str, ingest_time: datetime
) -> signal_pb2.Signal:
    """A copy of ``signal`` as stored and published: named, ingest time set."""
    stored = signal_pb2.Signal()
    stored.CopyFrom(signal)
    return stamp_signal(stored, user_id, signal_id, timestamp(ingest_time))


def stamp_signal(
    signal: signal_pb2.Signal, user_id: str, signal_id: str, ingest_time: Timestamp
) -> signal_pb2.Signal:
    """``signal`` itself made the stored signal (ingest: the request's item, no copy)."""
    # Fields this build does not know are not stored or published (size, privacy).
    signal.DiscardUnknownFields()
    signal.name = signal_name(user_id, signal_id)
    signal.ingest_time.CopyFrom(ingest_time)
    return signal


# --- listing ----------------------------------------------------------------------------

ORDERS: dict[str, tuple[str, bool]] = {
    "": ("start_time", True),
    "start_time desc": ("start_time", True),
    "start_time": ("start_time", False),
    "start_time asc": ("start_time", False),
    "ingest_time desc": ("ingest_time", True),
    "ingest_time": ("ingest_time", False),
    "ingest_time asc": ("ingest_time", False),
}


@dataclass(frozen=True)
class ListQuery:
    """A validated ListSignals request."""

    user_id: str
    page_size: int
    kinds: tuple[int, ...]
    source: int
    connection: str
    time_field: str  # "start_time" or "ingest_time": what time_range applies to
    range_start: datetime | None
    range_end: datetime | None
    order_field: str
    descending: bool
    # Keyset cursor: the last row of the previous page.
    after: tuple[datetime, str] | None

    def fingerprint(self) -> str:
        """Hash of the filters, so a token is refused with other filters."""
        parts = [
            self.user_id,
            ",".join(map(str, self.kinds)),
            str(self.source),
            self.connection,
            self.time_field,
            str(self.range_start),
            str(self.range_end),
            self.order_field,
            str(self.descending),
        ]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def parse_list_request(request: events_service_pb2.ListSignalsRequest, user_id: str) -> ListQuery:
    v: Violations = []
    if request.page_size < 0 or request.page_size > MAX_PAGE_SIZE:
        v.append(("page_size", f"must be between 0 and {MAX_PAGE_SIZE}"))
    order = ORDERS.get(request.order_by.strip().lower())
    if order is None:
        v.append(("order_by", f"must be one of {', '.join(repr(o) for o in ORDERS if o)}"))
        order = ORDERS[""]
    if request.connection and not is_child_name(request.connection, user_id, CONNECTION):
        v.append(("connection", f"must be users/{user_id}/connections/{{connection}}"))
    unknown = [k for k in request.kinds if k not in PAYLOAD_OF_KIND]
    if unknown:
        v.append(("kinds", f"unknown kinds {unknown}"))
    start = end = None
    if request.HasField("time_range"):
        tr = request.time_range
        start = datetime_of(tr, "start_time", "time_range.start_time")
        end = datetime_of(tr, "end_time", "time_range.end_time")
        if start and end and end < start:
            v.append(("time_range.end_time", "must not be before time_range.start_time"))
    time_field = (
        "ingest_time"
        if request.time_field == events_service_pb2.SIGNAL_TIME_FIELD_INGEST_TIME
        else "start_time"
    )
    if v:
        raise InvalidArgument(v)
    query = ListQuery(
        user_id=user_id,
        page_size=request.page_size or DEFAULT_PAGE_SIZE,
        kinds=tuple(sorted(set(request.kinds))),
        source=int(request.source),
        connection=request.connection,
        time_field=time_field,
        range_start=start,
        range_end=end,
        order_field=order[0],
        descending=order[1],
        after=None,
    )
    if request.page_token:
        query = _with_cursor(query, request.page_token)
    return query


def _with_cursor(query: ListQuery, token: str) -> ListQuery:
    cursor = paging.decode(token, query.fingerprint())
    after = (cursor.time, cursor.id) if cursor else None
    return ListQuery(**{**query.__dict__, "after": after})


def page_token(query: ListQuery, last_time: datetime, last_id: str) -> str:
    return paging.encode(paging.Cursor(last_time, last_id), query.fingerprint())

"""Pure rules for PurgeSignals and the replay RPCs: validated selectors and resume tokens."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import datetime

from google.type import interval_pb2

from kernel import paging
from kernel.errors import InvalidArgument
from kernel.identity import parse_user
from kernel.names import user_name
from kernel.timestamps import datetime_of
from services.events.domain import CONNECTION, PAYLOAD_OF_KIND, Violations, is_child_name
from tips.events.v1 import events_service_pb2 as pb
from tips.events.v1 import signal_pb2

DEFAULT_CHUNK = 200
MAX_CHUNK = 1000
DEFAULT_CHUNK_ALL = 500
MAX_CHUNK_ALL = 5000


def _interval(
    interval: interval_pb2.Interval, field: str, v: Violations
) -> tuple[datetime | None, datetime | None]:
    start = datetime_of(interval, "start_time", f"{field}.start_time")
    end = datetime_of(interval, "end_time", f"{field}.end_time")
    if start and end and end < start:
        v.append((f"{field}.end_time", f"must not be before {field}.start_time"))
    return start, end


def _kinds(kinds: list[int], v: Violations) -> tuple[int, ...]:
    unknown = [k for k in kinds if k not in PAYLOAD_OF_KIND]
    if unknown:
        v.append(("kinds", f"unknown kinds {unknown}"))
    return tuple(sorted(set(kinds)))


def _source_ok(source: int) -> bool:
    return source in signal_pb2.SignalSource.values()


# --- purge ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PurgeSelector:
    """A validated PurgeSignals selector (fields combine with AND)."""

    user_id: str
    source: int = 0
    connection: str = ""
    kinds: tuple[int, ...] = ()
    start: datetime | None = None
    end: datetime | None = None
    all_signals: bool = False
    reason: int = 0


def parse_purge(request: pb.PurgeSignalsRequest, user_id: str) -> PurgeSelector:
    v: Violations = []
    if not _source_ok(request.source):
        v.append(("source", f"unknown source {request.source}"))
    if request.connection and not is_child_name(request.connection, user_id, CONNECTION):
        v.append(("connection", f"must be users/{user_id}/connections/{{connection}}"))
    kinds = _kinds(list(request.kinds), v)
    start = end = None
    if request.HasField("time_range"):
        start, end = _interval(request.time_range, "time_range", v)
    if request.reason not in pb.PurgeReason.values():
        v.append(("reason", f"unknown reason {request.reason}"))
    narrowed = bool(request.source or request.connection or kinds or start or end)
    if request.all_signals and narrowed:
        v.append(("all_signals", "no other selector may be set with all_signals"))
    if not request.all_signals and not narrowed:
        v.append(("all_signals", "set a selector (source, connection, kinds, time_range) or this"))
    if v:
        raise InvalidArgument(v)
    return PurgeSelector(
        user_id, int(request.source), request.connection, kinds, start, end,
        request.all_signals, int(request.reason),
    )  # fmt: skip


# --- replay ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ScanQuery:
    """A validated replay: signals in [start, end) of ``time_field``, ascending."""

    users: tuple[str, ...]  # empty: every user
    kinds: tuple[int, ...]
    sources: tuple[int, ...]
    time_field: str  # "start_time" or "ingest_time"
    start: datetime
    end: datetime | None  # as requested; None means "now" (set per call in ``until``)
    until: datetime
    chunk: int
    after: tuple[datetime, str] | None = None

    def fingerprint(self) -> str:
        """Hash of the request's filters (not ``until``), so a token fits only its stream."""
        parts = [
            ",".join(self.users), ",".join(map(str, self.kinds)), ",".join(map(str, self.sources)),
            self.time_field, self.start.isoformat(), str(self.end),
        ]  # fmt: skip
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def token(self, last_time: datetime, last_id: str) -> str:
        return paging.encode(paging.Cursor(last_time, last_id), self.fingerprint())

    def resumed(self, token: str) -> ScanQuery:
        cursor = paging.decode(token, self.fingerprint(), "resume_token")
        return replace(self, after=(cursor.time, cursor.id) if cursor else None)


def _time_field(value: int) -> str:
    return "ingest_time" if value == pb.SIGNAL_TIME_FIELD_INGEST_TIME else "start_time"


def _required_range(
    request: pb.ReplaySignalsRequest | pb.ReplayAllSignalsRequest, v: Violations
) -> tuple[datetime | None, datetime | None]:
    if not request.HasField("time_range") or not request.time_range.HasField("start_time"):
        v.append(("time_range.start_time", "is required"))
        return None, None
    return _interval(request.time_range, "time_range", v)


def _chunk(requested: int, default: int, maximum: int, v: Violations) -> int:
    if not 0 <= requested <= maximum:
        v.append(("chunk_size", f"must be between 0 and {maximum}"))
        return default
    return requested or default


def parse_replay(request: pb.ReplaySignalsRequest, user_id: str, now: datetime) -> ScanQuery:
    v: Violations = []
    start, end = _required_range(request, v)
    kinds = _kinds(list(request.kinds), v)
    if not _source_ok(request.source):
        v.append(("source", f"unknown source {request.source}"))
    chunk = _chunk(request.chunk_size, DEFAULT_CHUNK, MAX_CHUNK, v)
    if v or start is None:
        raise InvalidArgument(v)
    sources = (int(request.source),) if request.source else ()
    query = ScanQuery(
        (user_id,), kinds, sources, _time_field(request.time_field), start, end, end or now, chunk
    )
    return query.resumed(request.resume_token)


def parse_replay_all(request: pb.ReplayAllSignalsRequest, now: datetime) -> ScanQuery:
    v: Violations = []
    start, end = _required_range(request, v)
    kinds = _kinds(list(request.kinds), v)
    bad = [s for s in request.sources if not _source_ok(s) or not s]
    if bad:
        v.append(("sources", f"unknown sources {bad}"))
    users: list[str] = []
    for i, name in enumerate(request.users):
        try:
            user_id = parse_user(name, f"users[{i}]")
        except InvalidArgument as exc:
            v.extend(exc.violations)
            continue
        if name != user_name(user_id):
            v.append((f"users[{i}]", f"must be users/{{user}}, got {name!r}"))
        users.append(user_id)
    chunk = _chunk(request.chunk_size, DEFAULT_CHUNK_ALL, MAX_CHUNK_ALL, v)
    if v or start is None:
        raise InvalidArgument(v)
    query = ScanQuery(
        tuple(sorted(set(users))), kinds, tuple(sorted(set(request.sources))),
        _time_field(request.time_field), start, end, end or now, chunk,
    )  # fmt: skip
    return query.resumed(request.resume_token)

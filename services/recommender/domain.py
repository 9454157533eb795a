"""Pure rules of the recommender: the user's context folded from signals, and the
request checks of the tip RPCs (counts, names, history tokens, reaction ids).

``fold`` applies one stored signal to a ``UserContext`` and returns the new
context; ``features`` computes the time-dependent view a decision made at
``now`` uses, in the user's timezone (from their profile). Steps are kept in
quarter-hour buckets of UTC time (the consumer does not wait for the
profile, and every zone's midnight falls on a quarter hour): "today" and
each past day are the user's LOCAL days, summed at decision time, so a
connector's day-long signal starting at local midnight, a phone's hourly
counts and a late sync for yesterday all land on the right day. "Usual" is
the mean of the past local days that have steps.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

from kernel import localtime, paging
from kernel.errors import InvalidArgument
from kernel.names import Pattern
from kernel.timestamps import datetime_of, to_datetime
from tips.events.v1 import signal_pb2

# Calendar events kept per user: the next ones matter, not the whole calendar.
MAX_EVENTS = 50
# Past local days whose step totals make the user's usual.
STEPS_DAYS = 14
# Steps are bucketed by quarter hour of UTC time (index = epoch seconds // 900).
STEP_BUCKET_S = 900
# Buckets kept: the usual's days, today, and a day of slack for any zone.
STEPS_KEPT = (STEPS_DAYS + 2) * 24 * 3600 // STEP_BUCKET_S
# A signal kind seen within this long counts as available to a tip needing it.
RECENT_SIGNALS = timedelta(days=7)
K = signal_pb2.SignalKind


@dataclass(frozen=True)
class BusyEvent:
    """A busy, not cancelled, timed calendar event."""

    start: datetime
    end: datetime


@dataclass(frozen=True)
class UserContext:
    """What the recommender knows about one user right now."""

    user_id: str
    # Quarter-hour bucket (epoch seconds // 900, UTC) -> steps counted in it.
    steps: dict[int, int] = field(default_factory=dict)
    sleep_minutes: int | None = None
    sleep_end: datetime | None = None
    mood_score: int | None = None
    mood_time: datetime | None = None
    # Provider event id -> busy event; cancelled or free events are dropped.
    busy_events: dict[str, BusyEvent] = field(default_factory=dict)
    # Catalog tip id -> no offer before this time (snoozed, done, dismissed).
    suppressed_until: dict[str, datetime] = field(default_factory=dict)
    last_signal_time: datetime | None = None
    signal_count: int = 0
    # Signal kind -> start time of its newest signal.
    kinds_seen: dict[int, datetime] = field(default_factory=dict)

    # --- persistence (JSON in recommender.user_context) -------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "steps": {str(k): v for k, v in self.steps.items()},
            "sleep_minutes": self.sleep_minutes,
            "sleep_end": _iso(self.sleep_end),
            "mood_score": self.mood_score,
            "mood_time": _iso(self.mood_time),
            "busy_events": {
                k: [e.start.isoformat(), e.end.isoformat()] for k, e in self.busy_events.items()
            },
            "suppressed_until": {k: v.isoformat() for k, v in self.suppressed_until.items()},
            "last_signal_time": _iso(self.last_signal_time),
            "signal_count": self.signal_count,
            "kinds_seen": {str(k): v.isoformat() for k, v in self.kinds_seen.items()},
        }

    @classmethod
    def from_json(cls, user_id: str, data: dict[str, Any]) -> UserContext:
        return cls(
            user_id=user_id,
            steps=_steps_of(data),
            sleep_minutes=data.get("sleep_minutes"),
            sleep_end=_dt(data.get("sleep_end")),
            mood_score=data.get("mood_score"),
            mood_time=_dt(data.get("mood_time")),
            busy_events={
                k: BusyEvent(datetime.fromisoformat(s), datetime.fromisoformat(e))
                for k, (s, e) in data.get("busy_events", {}).items()
            },
            suppressed_until={
                k: datetime.fromisoformat(v) for k, v in data.get("suppressed_until", {}).items()
            },
            last_signal_time=_dt(data.get("last_signal_time")),
            signal_count=int(data.get("signal_count", 0)),
            kinds_seen={
                int(k): datetime.fromisoformat(v) for k, v in data.get("kinds_seen", {}).items()
            },
        )


def _steps_of(data: dict[str, Any]) -> dict[int, int]:
    """The step buckets of a persisted context; per-UTC-day totals (the format
    before buckets) become one bucket at that day's UTC midnight."""
    if "steps" in data:
        return {int(k): int(v) for k, v in data["steps"].items()}
    buckets: dict[int, int] = {}
    days = {k: int(v) for k, v in data.get("steps_history", {}).items()}
    if data.get("steps_day"):
        days[data["steps_day"]] = days.get(data["steps_day"], 0) + int(data.get("steps_today", 0))
    for day, count in days.items():
        midnight = datetime.combine(date.fromisoformat(day), time(), tzinfo=UTC)
        buckets[bucket_of(midnight)] = count
    return buckets


def bucket_of(when: datetime) -> int:
    """The quarter-hour bucket of instant ``when``."""
    return int(when.timestamp()) // STEP_BUCKET_S


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def fold(ctx: UserContext, signal: signal_pb2.Signal) -> UserContext:
    """``ctx`` after ``signal``. Callers apply each signal once (claimed by msg id)."""
    start = to_datetime(signal.start_time)
    end = datetime_of(signal, "end_time") or start
    seen = datetime_of(signal, "ingest_time") or start
    last = max(ctx.last_signal_time, seen) if ctx.last_signal_time else seen
    kinds = dict(ctx.kinds_seen)
    if signal.kind and (signal.kind not in kinds or kinds[signal.kind] < start):
        kinds[signal.kind] = start
    ctx = replace(ctx, last_signal_time=last, signal_count=ctx.signal_count + 1, kinds_seen=kinds)
    payload = signal.WhichOneof("payload")
    if payload == "steps":
        return _fold_steps(ctx, start, int(signal.steps.count))
    if payload == "sleep":
        if ctx.sleep_end is None or end >= ctx.sleep_end:
            return replace(ctx, sleep_minutes=signal.sleep.asleep_minutes, sleep_end=end)
        return ctx
    if payload == "mood":
        if ctx.mood_time is None or start >= ctx.mood_time:
            return replace(ctx, mood_score=signal.mood.score, mood_time=start)
        return ctx
    if payload == "calendar_event":
        return _fold_calendar(ctx, signal.calendar_event, start, end)
    return ctx


def _fold_steps(ctx: UserContext, start: datetime, count: int) -> UserContext:
    """Add ``count`` to the bucket of ``start``; forget buckets older than the usual needs."""
    steps = dict(ctx.steps)
    key = bucket_of(start)
    steps[key] = steps.get(key, 0) + count
    horizon = max(steps) - STEPS_KEPT
    if min(steps) < horizon:
        steps = {k: v for k, v in steps.items() if k >= horizon}
    return replace(ctx, steps=steps)


def _fold_calendar(
    ctx: UserContext, event: signal_pb2.CalendarEventPayload, start: datetime, end: datetime
) -> UserContext:
    events = dict(ctx.busy_events)
    if event.cancelled or not event.busy or event.all_day:
        events.pop(event.event_id, None)
    else:
        events[event.event_id] = BusyEvent(start, end)
    # Forget past events; keep the soonest ones when too many.
    horizon = (ctx.last_signal_time or start) - timedelta(days=1)
    events = {k: e for k, e in events.items() if e.end > horizon}
    if len(events) > MAX_EVENTS:
        kept = sorted(events.items(), key=lambda kv: kv[1].start)[:MAX_EVENTS]
        events = dict(kept)
    return replace(ctx, busy_events=events)


def suppress(ctx: UserContext, catalog_tip: str, until: datetime) -> UserContext:
    """``ctx`` with ``catalog_tip`` not offered before ``until``."""
    suppressed = dict(ctx.suppressed_until)
    suppressed[catalog_tip] = max(until, suppressed.get(catalog_tip, until))
    return replace(ctx, suppressed_until=suppressed)


# --- the view a decision uses --------------------------------------------------------


@dataclass(frozen=True)
class Features:
    """The context as seen at ``now``: what eligibility, the policy and explanations read."""

    now: datetime
    local: datetime  # ``now`` in the user's timezone
    midnight: datetime  # the first instant of the user's local day (``kernel.localtime``)
    steps_today: int | None  # this local day's steps; None: no steps signal today
    steps_usual: float | None  # mean of past local days' totals; None without history
    sleep_minutes: int | None  # last night's sleep; None when none ended in the last 18 h
    mood_score: int | None  # None: no check-in in the last 12 h
    mood_age_minutes: int | None
    in_meeting: bool
    # Minutes until the next busy event today, or until local midnight when
    # the calendar is known and nothing else is booked; None without a calendar.
    free_minutes: int | None
    next_event_start: datetime | None
    signal_count: int
    recent_kinds: frozenset[int] = frozenset()

    @property
    def day_part(self) -> str:
        return day_part(self.local.hour)

    def values(self) -> dict[str, float]:
        """Named context features (NaN when unknown), the policy's context input."""
        nan = float("nan")

        def num(value: float | None) -> float:
            return nan if value is None else float(value)

        minutes_to_meeting = (
            (self.next_event_start - self.now).total_seconds() / 60
            if self.next_event_start
            else None
        )
        ratio = (
            self.steps_today / self.steps_usual
            if self.steps_today is not None and self.steps_usual
            else None
        )
        hour = self.local.hour + self.local.minute / 60
        return {
            "hour_local": hour,
            "weekday": float(self.local.weekday()),
            "is_weekend": 1.0 if self.local.weekday() >= 5 else 0.0,
            "morning": 1.0 if self.day_part == "morning" else 0.0,
            "afternoon": 1.0 if self.day_part == "afternoon" else 0.0,
            "evening": 1.0 if self.day_part == "evening" else 0.0,
            "night": 1.0 if self.day_part == "night" else 0.0,
            "free_minutes": num(self.free_minutes),
            "minutes_to_next_meeting": num(minutes_to_meeting),
            "in_meeting": 1.0 if self.in_meeting else 0.0,
            "steps_today": num(self.steps_today),
            "steps_usual": num(self.steps_usual),
            "steps_ratio": num(ratio),
            "sleep_minutes": num(self.sleep_minutes),
            "sleep_hours": num(self.sleep_minutes / 60 if self.sleep_minutes is not None else None),
            "mood_score": num(self.mood_score),
            "signal_count": float(self.signal_count),
        }

    def as_pairs(self) -> list[tuple[str, float]]:
        return list(self.values().items())


def day_part(hour: int) -> str:
    """The DayPart of a local hour (catalog_tip.proto's boundaries)."""
    if 5 <= hour < 12:
        return "morning"
    if 12 <= hour < 17:
        return "afternoon"
    if 17 <= hour < 22:
        return "evening"
    return "night"


@functools.lru_cache(maxsize=1024)
def _day_bounds(today: date, tz: tzinfo) -> tuple[int, ...]:
    """First buckets of the STEPS_DAYS local days before ``today``, of today and of
    tomorrow, ascending (each local midnight read DST-correctly)."""
    days = [today - timedelta(days=d) for d in range(STEPS_DAYS, -2, -1)]
    return tuple(bucket_of(localtime.local_midnight(day, tz)) for day in days)


def step_totals(ctx: UserContext, today: date, tz: tzinfo) -> tuple[int | None, float | None]:
    """(steps of local day ``today`` or None, mean of the past local days with steps or None)."""
    bounds = _day_bounds(today, tz)
    today_from, tomorrow_from = bounds[-2], bounds[-1]
    today_total: int | None = None
    past: dict[int, int] = {}
    for key, count in ctx.steps.items():
        if today_from <= key < tomorrow_from:
            today_total = (today_total or 0) + count
        elif bounds[0] <= key < today_from:
            day = bisect.bisect_right(bounds, key) - 1
            past[day] = past.get(day, 0) + count
    usual = sum(past.values()) / len(past) if past else None
    return today_total, usual


def features(ctx: UserContext, now: datetime, tz: tzinfo = UTC) -> Features:
    local = now.astimezone(tz)
    today = local.date()
    midnight = localtime.local_midnight(today, tz)
    steps, usual = step_totals(ctx, today, tz)
    sleep = (
        ctx.sleep_minutes
        if ctx.sleep_end is not None and now - ctx.sleep_end <= timedelta(hours=18)
        else None
    )
    mood_fresh = ctx.mood_time is not None and now - ctx.mood_time <= timedelta(hours=12)
    in_meeting = any(e.start <= now < e.end for e in ctx.busy_events.values())
    tomorrow = localtime.local_midnight(today + timedelta(days=1), tz)
    upcoming = sorted(e.start for e in ctx.busy_events.values() if e.start > now)
    next_start = upcoming[0] if upcoming and upcoming[0] < tomorrow else None
    has_calendar = K.SIGNAL_KIND_CALENDAR_EVENT in ctx.kinds_seen or bool(ctx.busy_events)
    if in_meeting or not has_calendar:
        free = None
    else:
        free = int(((next_start or tomorrow) - now).total_seconds() // 60)
    recent = frozenset(k for k, t in ctx.kinds_seen.items() if now - t <= RECENT_SIGNALS)
    if ctx.busy_events:
        recent |= {K.SIGNAL_KIND_CALENDAR_EVENT}
    return Features(
        now=now,
        local=local,
        midnight=midnight,
        steps_today=steps,
        steps_usual=usual,
        sleep_minutes=sleep,
        mood_score=ctx.mood_score if mood_fresh else None,
        mood_age_minutes=(
            int((now - ctx.mood_time).total_seconds() // 60)
            if mood_fresh and ctx.mood_time
            else None
        ),
        in_meeting=in_meeting,
        free_minutes=free,
        next_event_start=next_start if not in_meeting else None,
        signal_count=ctx.signal_count,
        recent_kinds=recent,
    )


# --- reactions -------------------------------------------------------------------------

R = signal_pb2.TipReaction
MAX_SNOOZE = timedelta(days=7)
MIN_SNOOZE = timedelta(minutes=1)
DEFAULT_SNOOZE = timedelta(hours=1)
# How long a catalog tip is not offered again after each reaction.
_QUIET_AFTER: dict[int, timedelta] = {
    R.TIP_REACTION_DONE: timedelta(hours=3),
    R.TIP_REACTION_DISMISS: timedelta(hours=12),
}


def snooze_until(
    reaction: int,
    now: datetime,
    *,
    until: datetime | None = None,
    duration: timedelta | None = None,
) -> datetime | None:
    """Validate a ReactToTip reaction and its snooze; the snooze end for a SNOOZE."""
    if reaction not in (R.TIP_REACTION_DONE, R.TIP_REACTION_SNOOZE, R.TIP_REACTION_DISMISS):
        raise InvalidArgument([("reaction", "must be DONE, SNOOZE or DISMISS")])
    if reaction != R.TIP_REACTION_SNOOZE:
        if until is not None:
            raise InvalidArgument([("snooze_until", "only a SNOOZE reaction takes it")])
        if duration is not None:
            raise InvalidArgument([("snooze_duration", "only a SNOOZE reaction takes it")])
        return None
    if until is not None:
        if not now < until <= now + MAX_SNOOZE:
            raise InvalidArgument([("snooze_until", "must be in the future and within 7 days")])
        return until
    if duration is not None:
        if not MIN_SNOOZE <= duration <= MAX_SNOOZE:
            raise InvalidArgument([("snooze_duration", "must be between 1 minute and 7 days")])
        return now + duration
    return now + DEFAULT_SNOOZE


def quiet_until(reaction: int, react_time: datetime, snoozed_until: datetime | None) -> datetime:
    """Until when the reacted tip's catalog tip is not offered again."""
    if reaction == R.TIP_REACTION_SNOOZE:
        return snoozed_until or react_time + DEFAULT_SNOOZE
    return react_time + _QUIET_AFTER.get(int(reaction), timedelta(0))


# --- request checks of the tip RPCs: counts, names, history tokens, reaction ids ---------

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

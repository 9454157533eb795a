"""Per-user daily features from signals (feature schema ``daily-v1``). Pure.

A day is the UTC date of the signal's start (sleep: of its end, the morning
it belongs to); the profile's timezone is the recommender's concern on the
hot path, batch features stay in UTC so a backfill needs no other service.
Calendar events are deduplicated by event id (the last signal wins: updates
and cancellations). Unknown values are absent from a row, not zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

from kernel.timestamps import datetime_of, to_datetime
from tips.events.v1 import signal_pb2

SCHEMAS: dict[str, tuple[str, ...]] = {
    "daily-v1": (
        "steps_total",
        "sleep_minutes",
        "sleep_score",
        "mood_mean",
        "busy_minutes",
        "meeting_count",
        "workout_count",
        "workout_kilocalories",
        "focus_sessions",
        "focus_completed",
        "tips_done",
        "tips_snoozed",
        "tips_dismissed",
        "signal_count",
    )
}
R = signal_pb2.TipReaction
REACTIONS = {
    R.TIP_REACTION_DONE: "tips_done",
    R.TIP_REACTION_SNOOZE: "tips_snoozed",
    R.TIP_REACTION_DISMISS: "tips_dismissed",
}


@dataclass
class _Day:
    counts: dict[str, float] = field(default_factory=dict)
    moods: list[int] = field(default_factory=list)
    sleep: tuple[datetime, int, int] | None = None  # (end, minutes, score) of the latest sleep
    meetings: dict[str, tuple[bool, float]] = field(default_factory=dict)  # id -> (busy, minutes)

    def add(self, key: str, value: float = 1.0) -> None:
        self.counts[key] = self.counts.get(key, 0.0) + value


class DailyFeatures:
    """Accumulates signals into (user, day) rows."""

    def __init__(self) -> None:
        self.days: dict[tuple[str, date], _Day] = {}

    def add(self, signals: Iterable[signal_pb2.Signal]) -> None:
        for s in signals:
            user = s.name.split("/")[1] if s.name.startswith("users/") else ""
            if not user:
                continue
            start = to_datetime(s.start_time)
            end = datetime_of(s, "end_time") or start
            payload = s.WhichOneof("payload")
            day_of = end if payload == "sleep" else start
            d = self.days.setdefault((user, day_of.date()), _Day())
            d.add("signal_count")
            if payload == "steps":
                d.add("steps_total", float(s.steps.count))
            elif payload == "sleep":
                if d.sleep is None or end >= d.sleep[0]:
                    d.sleep = (end, s.sleep.asleep_minutes, s.sleep.score)
            elif payload == "mood":
                d.moods.append(s.mood.score)
            elif payload == "calendar_event":
                e = s.calendar_event
                busy = e.busy and not e.cancelled and not e.all_day
                d.meetings[e.event_id] = (busy, max((end - start).total_seconds() / 60.0, 0.0))
            elif payload == "workout":
                d.add("workout_count")
                d.add("workout_kilocalories", s.workout.kilocalories)
            elif payload == "focus_session":
                d.add("focus_sessions")
                d.add("focus_completed", 1.0 if s.focus_session.completed else 0.0)
            elif payload == "tip_reaction":
                key = REACTIONS.get(s.tip_reaction.reaction)
                if key:
                    d.add(key)

    def rows(self, names: Sequence[str]) -> list[tuple[str, date, dict[str, float]]]:
        """(user, day, {feature: value}) restricted to ``names``, sorted by user and day."""
        out = []
        for (user, day), d in sorted(self.days.items()):
            values = dict(d.counts)
            if d.sleep is not None:
                values["sleep_minutes"] = float(d.sleep[1])
                if d.sleep[2]:
                    values["sleep_score"] = float(d.sleep[2])
            if d.moods:
                values["mood_mean"] = sum(d.moods) / len(d.moods)
            busy = [m for b, m in d.meetings.values() if b]
            if d.meetings:
                values["busy_minutes"] = sum(busy)
                values["meeting_count"] = float(len(busy))
            out.append((user, day, {k: v for k, v in values.items() if k in names}))
        return out

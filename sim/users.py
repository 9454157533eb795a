"""Synthetic users: hidden preferences and a daily routine of sleep, meetings,
steps and mood, from which the context a decision sees is computed."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from policy.features import CATEGORIES

DAY_END_HOUR = 22.5


@dataclass(frozen=True)
class User:
    user_id: str
    wake_hour: float
    sleep_need_minutes: float
    usual_steps: float  # per day
    meeting_rate: float  # share of work hours in meetings
    preferences: dict[str, float]  # hidden, per category
    energy_bias: float  # hidden: tolerance of effortful tips


@dataclass(frozen=True)
class Day:
    """One simulated day of a user (times are local hours)."""

    index: int
    weekday: int
    sleep_minutes: float
    mood: float  # -1..1
    meetings: tuple[tuple[float, float], ...]
    step_factor: float  # today's steps against the usual
    decision_hours: tuple[float, ...] = field(default=())


def make_user(index: int, rng: np.random.Generator) -> User:
    return User(
        user_id=f"sim-{index:04d}",
        wake_hour=float(np.clip(rng.normal(7.0, 0.8), 5.5, 9.5)),
        sleep_need_minutes=float(rng.normal(450, 30)),
        usual_steps=float(rng.uniform(3000, 12000)),
        meeting_rate=float(rng.uniform(0.05, 0.5)),
        preferences={c: float(rng.normal(0.0, 0.8)) for c in CATEGORIES},
        energy_bias=float(rng.normal(0.0, 0.5)),
    )


def make_day(user: User, index: int, rng: np.random.Generator, decisions: int) -> Day:
    weekday = index % 7
    sleep = float(np.clip(rng.normal(user.sleep_need_minutes - 30, 70), 180, 660))
    mood = float(np.clip(0.4 * (sleep - user.sleep_need_minutes) / 60 + rng.normal(0, 0.4), -1, 1))
    meetings: list[tuple[float, float]] = []
    if weekday < 5:
        hour = 9.0
        while hour < 18.0:
            if rng.random() < user.meeting_rate:
                length = float(rng.choice([0.5, 1.0, 1.5]))
                meetings.append((hour, min(hour + length, 18.0)))
                hour += length
            else:
                hour += 0.5
    hours = np.sort(rng.uniform(user.wake_hour + 0.5, DAY_END_HOUR, size=decisions))
    return Day(
        index=index,
        weekday=weekday,
        sleep_minutes=sleep,
        mood=mood,
        meetings=tuple(meetings),
        step_factor=float(np.exp(rng.normal(0, 0.4))),
        decision_hours=tuple(float(h) for h in hours),
    )


def _steps_by(user: User, hour: float) -> float:
    """The user's usual steps from waking until ``hour`` (a smooth day curve)."""
    span = DAY_END_HOUR - user.wake_hour
    share = min(max((hour - user.wake_hour) / span, 0.0), 1.0)
    return user.usual_steps * (0.5 - 0.5 * math.cos(math.pi * share))


def context_at(user: User, day: Day, hour: float) -> dict[str, float]:
    """The raw context (``features.CONTEXT_KEYS``) a decision at ``hour`` sees."""
    upcoming = [start for start, _ in day.meetings if start > hour]
    in_meeting = any(start <= hour < end for start, end in day.meetings)
    next_meeting = (min(upcoming) - hour) * 60 if upcoming else 10_000.0
    free = 0.0 if in_meeting else min(next_meeting, (DAY_END_HOUR - hour) * 60)
    usual = _steps_by(user, hour)
    return {
        "local_hour": hour,
        "weekday": float(day.weekday),
        "minutes_to_next_meeting": next_meeting,
        "free_block_minutes": free,
        "in_meeting": 1.0 if in_meeting else 0.0,
        "steps_today": usual * day.step_factor,
        "steps_usual_by_now": usual,
        "sleep_last_night_minutes": day.sleep_minutes,
        "mood": day.mood,
    }

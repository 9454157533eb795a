"""The built-in tip catalog and the rule policy over it ("rules/v0"). Pure.

Each rule looks at the decision ``Features`` and either proposes its catalog
tip with a score and an explanation naming the numbers, or stays silent. The
policy ranks proposals by score; the hydration tip is the fallback, so a
decision always has a tip. The ONNX bandit replaces the scores later; the
catalog ids are its arms and never change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.recommender.domain import Features
from tips.recommender.v1 import catalog_tip_pb2

POLICY_NAME = "rules"
MODEL_VERSION = "models/tip_rules/versions/v0"
FEATURE_SCHEMA_VERSION = "rules-v0"
CATALOG_VERSION = "builtin-v0"

STEPS_GOAL = 6000
SHORT_SLEEP_MINUTES = 6 * 60
MIN_FREE_BLOCK = 30
LOW_MOOD = 2

E = catalog_tip_pb2.TipEffort


@dataclass(frozen=True)
class CatalogEntry:
    """One built-in catalog tip."""

    id: str
    title: str
    body: str
    category: str
    effort: int
    minutes_needed: int
    # How long a decision stays relevant when nothing else bounds it.
    ttl: timedelta = timedelta(hours=2)

    @property
    def name(self) -> str:
        return f"catalogTips/{self.id}"


CATALOG: dict[str, CatalogEntry] = {
    e.id: e
    for e in (
        CatalogEntry(
            "walk_low_steps",
            "Take a 10-minute walk",
            "A brisk 10-minute walk adds about 1,000 steps and wakes you up.",
            "movement",
            E.TIP_EFFORT_MEDIUM,
            10,
        ),
        CatalogEntry(
            "wind_down_earlier",
            "Wind down 30 minutes earlier tonight",
            "Dim the lights and put the screens away 30 minutes before bed tonight.",
            "sleep",
            E.TIP_EFFORT_MEDIUM,
            30,
            ttl=timedelta(hours=16),
        ),
        CatalogEntry(
            "outside_before_meeting",
            "Step outside before your meeting",
            "Use the free time for a short walk outside before your next meeting.",
            "movement",
            E.TIP_EFFORT_MEDIUM,
            15,
        ),
        CatalogEntry(
            "breathing_low_mood",
            "Take 3 slow minutes to breathe",
            "Sit back, breathe in for 4 seconds and out for 6, for three minutes.",
            "wellbeing",
            E.TIP_EFFORT_LOW,
            3,
        ),
        CatalogEntry(
            "drink_water",
            "Drink a glass of water",
            "Have a glass of water now: small habits add up.",
            "hydration",
            E.TIP_EFFORT_LOW,
            1,
            ttl=timedelta(hours=1),
        ),
    )
}
FALLBACK = "drink_water"


@dataclass(frozen=True)
class Proposal:
    """A rule's pick: the catalog tip, its score, why, and until when it holds."""

    entry: CatalogEntry
    score: float
    explanation: str
    expire_time: datetime


Rule = Callable[[Features], Proposal | None]


def _propose(
    tip_id: str, f: Features, score: float, why: str, until: datetime | None = None
) -> Proposal:
    entry = CATALOG[tip_id]
    return Proposal(entry, score, why, until or f.now + entry.ttl)


def short_sleep(f: Features) -> Proposal | None:
    if f.sleep_minutes is None or f.sleep_minutes >= SHORT_SLEEP_MINUTES:
        return None
    hours, minutes = divmod(f.sleep_minutes, 60)
    return _propose(
        "wind_down_earlier",
        f,
        0.9,
        f"You slept {hours} h {minutes:02d} min last night, under the "
        f"{SHORT_SLEEP_MINUTES // 60} hours that keep you rested.",
    )


def low_mood(f: Features) -> Proposal | None:
    if f.mood_score is None or f.mood_score > LOW_MOOD:
        return None
    return _propose(
        "breathing_low_mood",
        f,
        0.85,
        f"You checked in with a mood of {f.mood_score}/5 {f.mood_age_minutes} minutes ago.",
    )


def free_block(f: Features) -> Proposal | None:
    if f.free_minutes is None or f.next_event_start is None or f.free_minutes < MIN_FREE_BLOCK:
        return None
    at = f.next_event_start.strftime("%H:%M")
    return _propose(
        "outside_before_meeting",
        f,
        0.8,
        f"You have {f.free_minutes} free minutes before your {at} UTC meeting.",
        until=f.next_event_start,
    )


def low_steps(f: Features) -> Proposal | None:
    if f.steps_today is None or f.steps_today >= STEPS_GOAL:
        return None
    return _propose(
        "walk_low_steps",
        f,
        0.7,
        f"You have walked {f.steps_today:,} steps today, {STEPS_GOAL - f.steps_today:,} short "
        f"of {STEPS_GOAL:,}.",
    )


def hydration(f: Features) -> Proposal:
    if f.signal_count:
        why = f"Nothing in your {f.signal_count} recent signals calls for more, so a small habit."
    else:
        why = "We have no signals from you yet, so a small habit to start with."
    return _propose(FALLBACK, f, 0.1, why)


RULES: tuple[Rule, ...] = (short_sleep, low_mood, free_block, low_steps)


def decide(f: Features, suppressed: dict[str, datetime], count: int) -> list[Proposal]:
    """Up to ``count`` proposals, best first; the fallback fills an empty answer."""
    proposals = [p for rule in RULES if (p := rule(f)) is not None]
    proposals = [p for p in proposals if suppressed.get(p.entry.id, f.now) <= f.now]
    proposals.sort(key=lambda p: p.score, reverse=True)
    if len(proposals) < count:
        proposals.append(hydration(f))
    return proposals[:count]

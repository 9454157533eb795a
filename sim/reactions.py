"""How a simulated user reacts to a tip: hidden utility -> done/snooze/dismiss.

The utility mixes the user's hidden category preference, the tip's hidden
quality and context effects a person would recognise (a walk when steps lag,
wind-down tips after a short night, focus in a free morning, no time -> snooze).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from policy.bandit import REWARD_DONE, REWARD_SNOOZE
from policy.features import MINUTES_CAP, day_part
from sim.catalog import SimTip
from sim.users import User

DONE, SNOOZE, DISMISS = "done", "snooze", "dismiss"


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _context_effect(category: str, ctx: Mapping[str, float]) -> float:
    hour = ctx["local_hour"]
    part = day_part(hour)
    usual = ctx["steps_usual_by_now"]
    lag = 1.0 - ctx["steps_today"] / usual if usual > 0 else 0.0  # >0: behind
    short_night = (420.0 - ctx["sleep_last_night_minutes"]) / 60.0  # hours short
    mood = ctx["mood"]
    weekend = ctx["weekday"] >= 5
    soon = min(ctx["minutes_to_next_meeting"], MINUTES_CAP) < 30
    if category == "movement":
        return 1.6 * lag + (0.4 if part == "afternoon" else 0.0) - (0.8 if part == "night" else 0.0)
    if category == "focus":
        long_block = ctx["free_block_minutes"] >= 60
        return (0.9 if part == "morning" and long_block else 0.0) - (
            0.9 if part in ("evening", "night") or weekend else 0.0
        )
    if category == "sleep":
        late = part in ("evening", "night")
        return (0.6 + 0.6 * short_night if late else -1.0) + 0.0
    if category == "hydration":
        return 0.2 - 0.6 * lag
    if category == "planning":
        return (0.9 if part == "morning" and not weekend else -0.3) + (0.4 if soon else 0.0)
    if category == "social":
        return 0.8 if weekend or part == "evening" else -0.5
    if category == "mindfulness":
        return -1.0 * mood + (0.5 if soon else 0.0)
    if category == "nutrition":
        return 0.7 if 11.5 <= hour < 13.5 or 18.0 <= hour < 19.5 else -0.4
    return 0.0


def reaction_probabilities(user: User, tip: SimTip, ctx: Mapping[str, float]) -> dict[str, float]:
    f = tip.features
    energy = (
        0.5 * ctx["mood"] + (ctx["sleep_last_night_minutes"] - 420.0) / 120.0 + user.energy_bias
    )
    fits = f.minutes_needed <= ctx["free_block_minutes"]
    part_fit = not f.day_parts or day_part(ctx["local_hour"]) in f.day_parts
    liking = user.preferences[f.category] + tip.quality
    utility = (
        -1.3
        + liking
        + _context_effect(f.category, ctx)
        - 0.35 * (f.effort - 1) * (1.0 - energy)
        + (0.3 if part_fit else -0.3)
        - (1.5 if ctx["in_meeting"] else 0.0)
    )
    engage = _sigmoid(utility)
    done = engage * (1.0 if fits else 0.25)
    # Liked but no time (or not now): snooze; otherwise dismiss.
    snooze = (1.0 - done) * 0.4 * _sigmoid(liking + (1.0 if not fits else 0.0))
    return {DONE: done, SNOOZE: snooze, DISMISS: 1.0 - done - snooze}


def expected_reward(probs: Mapping[str, float]) -> float:
    return REWARD_DONE * probs[DONE] + REWARD_SNOOZE * probs[SNOOZE]


def draw(probs: Mapping[str, float], u: float) -> str:
    """The reaction for a uniform draw ``u`` (shared across policies: common random numbers)."""
    if u < probs[DONE]:
        return DONE
    if u < probs[DONE] + probs[SNOOZE]:
        return SNOOZE
    return DISMISS

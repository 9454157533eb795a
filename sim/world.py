"""The simulated world: users living days, and the decision rounds they produce.

Rounds come in time order (day by day, every user's decisions of the day by
hour). Each round carries the hidden truth: every tip's reaction
probabilities and expected reward, and a uniform draw ``u`` that every policy
evaluated on the round shares (common random numbers), so policies are
compared on the same luck.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from policy.features import CATEGORIES, feature_vector
from sim.catalog import SimTip, make_catalog
from sim.reactions import expected_reward, reaction_probabilities
from sim.users import Day, User, context_at, make_day, make_user


@dataclass(frozen=True)
class Round:
    t: int
    user: User
    day: Day
    context: dict[str, float]  # raw context without the affinity keys
    rows: np.ndarray  # [n_tips, DIM] feature rows, affinity column at its prior
    probabilities: list[dict[str, float]]  # hidden, per tip
    expected: np.ndarray  # hidden expected reward per tip
    u: float


class World:
    def __init__(
        self, users: int = 40, days: int = 28, decisions_per_day: int = 6, seed: int = 1
    ) -> None:
        self.seed = seed
        self.catalog: list[SimTip] = make_catalog()
        rng = np.random.default_rng(seed)
        self.users = [make_user(i, rng) for i in range(users)]
        self.days = days
        self.decisions_per_day = decisions_per_day

    @property
    def arms(self) -> list[str]:
        return [t.features.catalog_tip for t in self.catalog]

    @property
    def n_rounds(self) -> int:
        return len(self.users) * self.days * self.decisions_per_day

    def rounds(self) -> Iterator[Round]:
        rng = np.random.default_rng(self.seed + 1000)
        t = 0
        for d in range(self.days):
            todays = [(u, make_day(u, d, rng, self.decisions_per_day)) for u in self.users]
            slots = sorted(
                ((h, i) for i, (_, day) in enumerate(todays) for h in day.decision_hours)
            )
            for hour, i in slots:
                user, day = todays[i]
                ctx = context_at(user, day, hour)
                probs = [reaction_probabilities(user, tip, ctx) for tip in self.catalog]
                yield Round(
                    t=t,
                    user=user,
                    day=day,
                    context=ctx,
                    rows=np.stack([feature_vector(ctx, tip.features) for tip in self.catalog]),
                    probabilities=probs,
                    expected=np.array([expected_reward(p) for p in probs]),
                    u=float(rng.random()),
                )
                t += 1


class Affinity:
    """A user's smoothed done-rate per category, as the recommender would keep it
    from reactions (one per policy: what a user did depends on what was shown)."""

    def __init__(self) -> None:
        self._done: dict[tuple[str, str], float] = {}
        self._shown: dict[tuple[str, str], float] = {}

    def rate(self, user_id: str, category: str) -> float:
        key = (user_id, category)
        return (self._done.get(key, 0.0) + 1.0) / (self._shown.get(key, 0.0) + 2.0)

    def record(self, user_id: str, category: str, done: bool) -> None:
        key = (user_id, category)
        self._shown[key] = self._shown.get(key, 0.0) + 1.0
        self._done[key] = self._done.get(key, 0.0) + (1.0 if done else 0.0)

    def context(self, user_id: str) -> dict[str, float]:
        return {f"affinity_{c}": self.rate(user_id, c) for c in CATEGORIES}

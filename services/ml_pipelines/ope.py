"""Off-policy estimators of a target policy's expected reward from logged bandit data. Pure.

Each logged round ``i`` had an action chosen with (logged) propensity ``p_i``
and earned reward ``r_i``. For the target policy ``pi`` the estimators need,
per round: ``w_i = pi(a_i | x_i) / p_i`` (importance weight of the logged
action), and for doubly robust a reward model ``q``: ``dm_i = sum_a pi(a|x_i)
q(x_i, a)`` and ``q_i = q(x_i, a_i)``.

- IPS:   mean(w r)                               unbiased, high variance
- SNIPS: sum(w r) / sum(w)                       small bias, lower variance
- DR:    mean(dm + w (r - q))                    unbiased if p is right,
  low variance if q is good (Dudik et al. 2011)

Confidence intervals use the normal approximation with each estimator's
influence function (for SNIPS, the delta method). A comparison runs both
policies on the SAME rounds, so the lift's interval comes from the per-round
differences of the influences: shared noise cancels, which is what makes a
small lift detectable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from statistics import NormalDist

import numpy as np


class Kind(Enum):
    IPS = "ips"
    SNIPS = "snips"
    DR = "dr"


class Verdict(Enum):
    BETTER = "better"
    NOT_WORSE = "not_worse"
    WORSE = "worse"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Rounds:
    """One policy's view of the logged rounds (arrays of the same length n)."""

    weights: np.ndarray  # pi(a_i | x_i) / p_i
    rewards: np.ndarray  # r_i
    direct: np.ndarray  # sum_a pi(a | x_i) q(x_i, a)   (DR only)
    q_logged: np.ndarray  # q(x_i, a_i)                 (DR only)

    def __post_init__(self) -> None:
        n = len(self.rewards)
        for name in ("weights", "direct", "q_logged"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name}: expected {n} values, got {len(getattr(self, name))}")

    @property
    def n(self) -> int:
        return len(self.rewards)


@dataclass(frozen=True)
class Estimate:
    value: float
    lower: float
    upper: float


@dataclass(frozen=True)
class Comparison:
    """One estimator on the target and the baseline, and the lift between them."""

    kind: Kind
    target: Estimate
    baseline: Estimate
    lift: Estimate


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def point_and_influence(kind: Kind, rounds: Rounds) -> tuple[float, np.ndarray]:
    """The estimate and its per-round influence (zero-mean terms whose variance is its)."""
    if rounds.n == 0:
        raise ValueError("rounds: at least one logged round is needed")
    w, r = rounds.weights, rounds.rewards
    if kind is Kind.IPS:
        terms = w * r
        value = float(terms.mean())
        return value, terms - value
    if kind is Kind.SNIPS:
        mean_w = float(w.mean())
        if mean_w <= 0.0:
            return 0.0, np.zeros(rounds.n)  # the target never takes a logged action
        value = float((w * r).sum() / w.sum())
        return value, w * (r - value) / mean_w
    terms = rounds.direct + w * (r - rounds.q_logged)
    value = float(terms.mean())
    return value, terms - value


def _interval(value: float, influence: np.ndarray, z: float) -> Estimate:
    n = len(influence)
    se = float(np.sqrt((influence**2).sum() / (n * max(n - 1, 1)))) if n > 1 else math.inf
    return Estimate(value, value - z * se, value + z * se)


def estimate(kind: Kind, rounds: Rounds, confidence: float = 0.95) -> Estimate:
    """One estimator's value with its confidence interval."""
    value, influence = point_and_influence(kind, rounds)
    return _interval(value, influence, _z(confidence))


def compare(kind: Kind, target: Rounds, baseline: Rounds, confidence: float = 0.95) -> Comparison:
    """``kind`` on both policies over the same rounds, and the lift target - baseline."""
    if target.n != baseline.n:
        raise ValueError("target and baseline must be evaluated on the same rounds")
    z = _z(confidence)
    t_value, t_infl = point_and_influence(kind, target)
    b_value, b_infl = point_and_influence(kind, baseline)
    return Comparison(
        kind,
        _interval(t_value, t_infl, z),
        _interval(b_value, b_infl, z),
        _interval(t_value - b_value, t_infl - b_infl, z),
    )


def verdict(lift: Estimate | None, decisions: int, min_decisions: int) -> Verdict:
    """BETTER / WORSE when the lift's interval excludes 0, else NOT_WORSE.

    INCONCLUSIVE without a baseline (``lift`` None) or with too few decisions.
    """
    if lift is None or decisions < min_decisions:
        return Verdict.INCONCLUSIVE
    if lift.lower > 0.0:
        return Verdict.BETTER
    if lift.upper < 0.0:
        return Verdict.WORSE
    return Verdict.NOT_WORSE

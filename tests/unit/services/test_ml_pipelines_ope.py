"""Off-policy estimators on synthetic logs whose true values are known."""

from __future__ import annotations

import numpy as np
import pytest

from services.ml_pipelines import ope
from services.ml_pipelines.ope import Kind, Rounds, Verdict

K = 4
MEANS = np.array([0.2, 0.4, 0.6, 0.8])  # expected reward of each action


def _logs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Uniformly logged actions (propensity 1/K) and Bernoulli rewards."""
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, K, n)
    rewards = (rng.random(n) < MEANS[actions]).astype(float)
    return actions, np.full(n, 1.0 / K), rewards


def _rounds(policy: np.ndarray, q: np.ndarray | None, n: int = 20_000, seed: int = 1) -> Rounds:
    """``policy``: the target's probability of each action (same in every context)."""
    actions, props, rewards = _logs(n, seed)
    qq = np.zeros(K) if q is None else q
    return Rounds(
        weights=policy[actions] / props,
        rewards=rewards,
        direct=np.full(n, float(policy @ qq)),
        q_logged=qq[actions],
    )


def _always(action: int) -> np.ndarray:
    p = np.zeros(K)
    p[action] = 1.0
    return p


@pytest.mark.parametrize("kind", list(Kind))
def test_estimates_are_unbiased_and_intervals_cover(kind: Kind) -> None:
    target = np.array([0.1, 0.1, 0.2, 0.6])
    true_value = float(target @ MEANS)  # 0.66
    q = MEANS if kind is Kind.DR else None
    estimates = [ope.estimate(kind, _rounds(target, q, n=2000, seed=s)) for s in range(60)]
    covered = sum(e.lower < true_value < e.upper for e in estimates) / len(estimates)
    assert covered >= 0.85  # nominal 0.95
    assert abs(np.mean([e.value for e in estimates]) - true_value) < 0.01
    assert all(e.upper - e.lower < 0.15 for e in estimates)


def test_ips_is_exact_on_a_hand_computed_log() -> None:
    # Two rounds, target always takes action 0: weights 2 and 0.
    rounds = Rounds(
        weights=np.array([2.0, 0.0]),
        rewards=np.array([1.0, 1.0]),
        direct=np.zeros(2),
        q_logged=np.zeros(2),
    )
    assert ope.estimate(Kind.IPS, rounds).value == pytest.approx(1.0)
    assert ope.estimate(Kind.SNIPS, rounds).value == pytest.approx(1.0)
    # DR with a zero reward model is IPS.
    assert ope.estimate(Kind.DR, rounds).value == pytest.approx(1.0)


def test_dr_with_a_perfect_reward_model_is_tighter_than_ips() -> None:
    target = _always(3)
    ips = ope.estimate(Kind.IPS, _rounds(target, None))
    dr = ope.estimate(Kind.DR, _rounds(target, MEANS))
    assert dr.upper - dr.lower < (ips.upper - ips.lower) / 2
    assert dr.lower < 0.8 < dr.upper


def test_snips_is_scale_invariant_where_ips_is_not() -> None:
    base = _rounds(_always(2), None)
    doubled = Rounds(base.weights * 2, base.rewards, base.direct, base.q_logged)
    assert ope.estimate(Kind.SNIPS, doubled).value == pytest.approx(
        ope.estimate(Kind.SNIPS, base).value
    )
    assert ope.estimate(Kind.IPS, doubled).value == pytest.approx(
        2 * ope.estimate(Kind.IPS, base).value
    )


@pytest.mark.parametrize("kind", list(Kind))
def test_verdicts(kind: Kind) -> None:
    q = MEANS if kind is Kind.DR else None
    best, worst = _rounds(_always(3), q), _rounds(_always(0), q)
    better = ope.compare(kind, best, worst)
    assert better.lift.value == pytest.approx(0.6, abs=0.05)
    assert ope.verdict(better.lift, best.n, 100) is Verdict.BETTER
    assert ope.verdict(ope.compare(kind, worst, best).lift, best.n, 100) is Verdict.WORSE
    same = ope.compare(kind, best, _rounds(_always(3), q))
    assert same.lift.lower <= 0.0 <= same.lift.upper
    assert ope.verdict(same.lift, best.n, 100) is Verdict.NOT_WORSE


def test_inconclusive_without_baseline_or_data() -> None:
    lift = ope.Estimate(0.5, 0.4, 0.6)
    assert ope.verdict(None, 10_000, 100) is Verdict.INCONCLUSIVE
    assert ope.verdict(lift, 99, 100) is Verdict.INCONCLUSIVE


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="confidence"):
        ope.estimate(Kind.IPS, _rounds(_always(0), None, n=10), confidence=1.0)
    with pytest.raises(ValueError, match="same rounds"):
        ope.compare(Kind.IPS, _rounds(_always(0), None, n=10), _rounds(_always(0), None, n=11))
    with pytest.raises(ValueError, match="weights"):
        Rounds(np.zeros(2), np.zeros(3), np.zeros(3), np.zeros(3))

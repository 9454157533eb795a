"""The promotion gate: the DR lift's lower confidence bound must be above 0."""

from __future__ import annotations

import numpy as np
import pytest

from kernel.errors import FailedPrecondition
from services.ml_pipelines import ope, promotion
from services.ml_pipelines.core import evaluation
from tips.ml_pipelines.v1 import model_pb2

pytestmark = pytest.mark.unit

NAME, INCUMBENT = "models/m/versions/2", "models/m/versions/1"
MIN = 100


def _evaluation(
    lift: tuple[float, float, float],
    baseline: str = INCUMBENT,
    decisions: int = 500,
    estimator: int = model_pb2.ESTIMATOR_DR,
) -> bytes:
    value, lower, upper = lift
    result = model_pb2.OfflineEvaluation(
        primary_estimator=estimator,  # type: ignore[arg-type]
        baseline_version=baseline,
        decision_count=decisions,
        confidence_level=0.95,
        results=[
            model_pb2.EstimatorResult(
                estimator=estimator,  # type: ignore[arg-type]
                estimated_reward=0.5 + value,
                baseline_estimated_reward=0.5,
                lift=value,
                lift_ci_lower=lower,
                lift_ci_upper=upper,
            )
        ],
    )
    return result.SerializeToString()


def _reason(evaluation: bytes | None, incumbent: str = INCUMBENT) -> str | None:
    try:
        promotion.check(NAME, evaluation, incumbent, MIN)
    except FailedPrecondition as exc:
        return exc.reason
    return None


def test_a_lift_whose_lower_bound_is_above_zero_passes() -> None:
    assert _reason(_evaluation((0.05, 0.01, 0.09))) is None


def test_an_interval_containing_zero_is_refused_with_its_numbers() -> None:
    with pytest.raises(FailedPrecondition) as err:
        promotion.check(NAME, _evaluation((0.02, -0.01, 0.05)), INCUMBENT, MIN)
    assert err.value.reason == "LIFT_LOWER_BOUND_NOT_ABOVE_ZERO"
    assert err.value.metadata["lift_ci_lower"] == "-0.01"
    assert err.value.metadata["incumbent"] == INCUMBENT
    # A lower bound of exactly 0 is not above it.
    assert _reason(_evaluation((0.0, 0.0, 0.0))) == "LIFT_LOWER_BOUND_NOT_ABOVE_ZERO"


def test_a_worse_candidate_is_named_worse() -> None:
    assert _reason(_evaluation((-0.05, -0.09, -0.01))) == "EVALUATED_WORSE"


def test_the_first_promotion_has_nothing_to_beat() -> None:
    first = model_pb2.OfflineEvaluation(
        baseline_version="", decision_count=3, verdict=model_pb2.EVALUATION_VERDICT_INCONCLUSIVE
    ).SerializeToString()
    assert _reason(first, incumbent="") is None


def test_what_the_gate_needs_before_it_reads_the_lift() -> None:
    assert _reason(None) == "NOT_EVALUATED"
    # Evaluated against another version than the one promoted now.
    assert _reason(_evaluation((0.05, 0.01, 0.09), baseline="models/m/versions/7")) == (
        "STALE_BASELINE"
    )
    assert _reason(_evaluation((0.05, 0.01, 0.09)), incumbent="") == "STALE_BASELINE"
    assert _reason(_evaluation((0.05, 0.01, 0.09), decisions=MIN - 1)) == "TOO_FEW_DECISIONS"
    # The gate reads DR, whichever estimator was primary.
    ips_only = _evaluation((0.05, 0.01, 0.09), estimator=model_pb2.ESTIMATOR_IPS)
    assert _reason(ips_only) == "NO_DR_ESTIMATE"


def _policy(prefers: int, k: int = 4, strength: float = 0.6) -> np.ndarray:
    p = np.full(k, (1.0 - strength) / k)
    p[prefers] += strength
    return p


def _gate_on(target: np.ndarray, baseline: np.ndarray, n: int, seed: int) -> str | None:
    """The gate on a real evaluation: uniformly logged rounds of 4 actions whose
    means are known, DR with a constant reward model."""
    means = np.array([0.2, 0.4, 0.6, 0.8])
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, 4, n)
    rewards = (rng.random(n) < means[actions]).astype(float)
    q = np.full(4, 0.5)

    def rounds(p: np.ndarray) -> ope.Rounds:
        return ope.Rounds(p[actions] * 4, rewards, np.full(n, float(p @ q)), q[actions])

    c = ope.compare(ope.Kind.DR, rounds(target), rounds(baseline))
    result = model_pb2.OfflineEvaluation(
        baseline_version=INCUMBENT,
        decision_count=n,
        confidence_level=0.95,
        verdict=evaluation.VERDICTS[ope.verdict(c.lift, n, MIN)],
        results=[
            model_pb2.EstimatorResult(
                estimator=model_pb2.ESTIMATOR_DR,
                lift=c.lift.value,
                lift_ci_lower=c.lift.lower,
                lift_ci_upper=c.lift.upper,
            )
        ],
    )
    return _reason(result.SerializeToString())


def test_on_real_estimates_better_passes_and_a_near_tie_does_not() -> None:
    # Prefers the best action over one preferring the worst: true lift 0.36.
    assert _gate_on(_policy(3), _policy(0), 2000, seed=1) is None
    # Two policies of the same true value (0.5) on different actions: no lift to
    # detect, the interval contains 0.
    tie = _gate_on(np.array([0.0, 0.5, 0.5, 0.0]), np.array([0.5, 0.0, 0.0, 0.5]), 2000, seed=2)
    assert tie == "LIFT_LOWER_BOUND_NOT_ABOVE_ZERO"

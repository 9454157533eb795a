"""Slates in the log: the first pick is evaluated from rank-0 rows, against a known truth.

The logging policy answers with 3 of 5 tips, drawn one after another without
replacement as the recommender's ``DecisionEngine.decide`` does, and each pick
is logged as its own row: its rank, its propensity over the candidates left,
those candidates. Rewards come from known per-(context, tip) means, so the
target policy's value for its first pick is known exactly. The estimates go
through the pipeline's own path (``offline.rounds_of`` ->
``evaluation.evaluate_rounds``); the old one (every row as a single choice)
through the functions it used.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from policy import features
from services.ml_pipelines import offline, ope
from services.ml_pipelines.core import evaluation
from services.ml_pipelines.ope import Kind
from tips.ml_pipelines.v1 import model_pb2

ARMS = ("walk_outside", "wind_down", "deep_work", "drink_water", "plan_tomorrow")
CATEGORIES = ("movement", "sleep", "focus", "hydration", "planning")
HOURS = (8.0, 20.0)  # the two contexts, equally likely
SLATE = 3
DECISIONS = 3000
# Expected reward of each tip (ARMS order) by hour.
MEANS = {8.0: (0.9, 0.05, 0.6, 0.2, 0.3), 20.0: (0.05, 0.9, 0.2, 0.6, 0.3)}
# Softmax scores. The logging policy knows the best tips, so its later picks
# are the worse ones: rank > 0 rows carry lower rewards than first picks.
LOGGING = {8.0: (2.0, 0.0, 1.5, 0.5, 0.5), 20.0: (0.0, 2.0, 0.5, 1.5, 0.5)}
# The target is greedier for the best tip and ranks the rest differently.
TARGET = {8.0: (3.0, 0.0, 0.5, 1.0, 1.5), 20.0: (0.0, 3.0, 1.0, 0.5, 1.5)}
BOOK = offline.TipBook(
    {
        arm: features.TipFeatures(f"catalogTips/{arm}", category, 2, 10, frozenset())
        for arm, category in zip(ARMS, CATEGORIES, strict=True)
    }
)
T0 = datetime(2026, 1, 5, tzinfo=UTC)
_SIN, _COS = features.ROW_NAMES.index("hour_sin"), features.ROW_NAMES.index("hour_cos")


def _softmax(
    scores: Mapping[float, Sequence[float]], hour: float, arms: Sequence[str]
) -> np.ndarray:
    z = np.array([scores[hour][ARMS.index(a)] for a in arms])
    e = np.exp(z - z.max())
    out: np.ndarray = e / e.sum()
    return out


def _hour(r: offline.Round) -> float:
    """The round's context, read back from its rebuilt rows (hour_sin, hour_cos)."""
    angle = math.atan2(r.rows[0, _SIN], r.rows[0, _COS])
    return float(round(math.degrees(angle) / 15.0) % 24)


def _policy(scores: Mapping[float, Sequence[float]]) -> evaluation.Probabilities:
    """A softmax policy over each round's candidates, as ``VersionPolicy.probabilities``."""

    def probabilities(rounds: Sequence[offline.Round]) -> list[np.ndarray]:
        return [_softmax(scores, _hour(r), r.arms) for r in rounds]

    return probabilities


def first_pick_value(scores: Mapping[float, Sequence[float]]) -> float:
    """Exactly: mean over contexts of sum_a pi(a | x, all candidates) * mean reward."""
    values = [_softmax(scores, h, ARMS) @ np.array(MEANS[h]) for h in HOURS]
    return float(np.mean(values))


def slate_logs(decisions: int, seed: int) -> list[offline.LoggedRow]:
    """Rows as the recommender logs a 3-tip answer: one per pick, picks without replacement."""
    rng = np.random.default_rng(seed)
    out: list[offline.LoggedRow] = []
    for i in range(decisions):
        hour = HOURS[int(rng.integers(len(HOURS)))]
        remaining = list(ARMS)
        for rank in range(SLATE):
            probs = _softmax(LOGGING, hour, remaining)
            at = int(rng.choice(len(remaining), p=probs))
            arm = remaining[at]
            out.append(
                offline.LoggedRow(
                    tip=f"users/u_1/tips/{i}-{rank}",
                    user_id="u_1",
                    decide_time=T0 + timedelta(minutes=i),
                    action=arm,
                    propensity=float(probs[at]),  # conditional on the earlier picks
                    candidates=tuple(remaining),  # the earlier picks left out
                    context={"hour_local": hour, "weekday": 2.0},
                    reward=float(rng.random() < MEANS[hour][ARMS.index(arm)]),
                    model_version="",
                    rank=rank,
                )
            )
            remaining.remove(arm)
    return out


@pytest.fixture(scope="module")
def rounds() -> list[offline.Round]:
    return offline.rounds_of(slate_logs(DECISIONS, seed=7), BOOK)


def _interval(r: model_pb2.EstimatorResult) -> str:
    return f"{r.estimated_reward:.4f} [{r.ci_lower:.4f}, {r.ci_upper:.4f}]"


def test_first_pick_estimates_cover_the_truth_where_all_rows_do_not(
    rounds: list[offline.Round],
) -> None:
    truth = first_pick_value(TARGET)
    kinds = [Kind.DR, Kind.IPS, Kind.SNIPS]
    result, picks = evaluation.evaluate_rounds(rounds, _policy(TARGET), None, kinds, 0.95, 100)
    assert result.decision_count == DECISIONS
    assert (picks.later_picks, picks.unknown_rank) == ((SLATE - 1) * DECISIONS, 0)
    assert (result.later_pick_count, result.unknown_rank_count) == ((SLATE - 1) * DECISIONS, 0)
    assert result.verdict == model_pb2.EVALUATION_VERDICT_INCONCLUSIVE  # no baseline
    print(f"\ntruth {truth:.4f}")
    for r in result.results:
        print(f"first picks {model_pb2.Estimator.Name(r.estimator)}: {_interval(r)}")
        assert r.ci_lower <= truth <= r.ci_upper, (truth, r)

    # The old way: every row a single choice, the target scored on each row's
    # candidates and weighted by the row's (conditional) propensity.
    q = offline.predicted_rewards(offline.reward_model(rounds), rounds)
    every_row = offline.ope_rounds(_policy(TARGET)(rounds), rounds, q)
    for kind in kinds:
        old = ope.estimate(kind, every_row)
        half = (old.upper - old.lower) / 2
        print(f"all rows {kind.name}: {old.value:.4f} [{old.lower:.4f}, {old.upper:.4f}]")
        assert not old.lower <= truth <= old.upper
        assert truth - old.value > 5 * half  # biased low: later picks are the worse tips


def test_the_lift_over_the_logging_policy_covers_the_true_lift(
    rounds: list[offline.Round],
) -> None:
    true_lift = first_pick_value(TARGET) - first_pick_value(LOGGING)
    result, _ = evaluation.evaluate_rounds(
        rounds, _policy(TARGET), _policy(LOGGING), [Kind.DR, Kind.IPS, Kind.SNIPS], 0.95, 100
    )
    print(f"\ntrue lift {true_lift:.4f}")
    for r in result.results:
        name = model_pb2.Estimator.Name(r.estimator)
        print(f"lift {name}: {r.lift:.4f} [{r.lift_ci_lower:.4f}, {r.lift_ci_upper:.4f}]")
        assert r.lift_ci_lower <= true_lift <= r.lift_ci_upper
    assert result.verdict == model_pb2.EVALUATION_VERDICT_BETTER


def test_rows_of_unknown_rank_are_left_out_and_counted() -> None:
    logged = slate_logs(40, seed=1)
    unknown = [r for r in logged[:30] if r.rank == 0]
    rows = [*(_without_rank(r) for r in unknown), *logged[30:]]
    rounds = offline.rounds_of(rows, BOOK)
    assert [r.rank for r in rounds] == [None] * len(unknown) + [r.rank for r in logged[30:]]
    picks = offline.first_picks(rounds)
    assert [r.rank for r in picks.rounds] == [0] * sum(r.rank == 0 for r in logged[30:])
    assert picks.unknown_rank == len(unknown)
    assert picks.later_picks == sum(1 for r in logged[30:] if r.rank)

    # Nothing known to be a first pick: no estimate, whatever else was logged.
    only_unknown = offline.rounds_of([_without_rank(r) for r in logged], BOOK)
    result, none = evaluation.evaluate_rounds(
        only_unknown, _policy(TARGET), _policy(LOGGING), [Kind.DR], 0.95, 1
    )
    assert result.decision_count == 0 and not result.results
    assert result.verdict == model_pb2.EVALUATION_VERDICT_INCONCLUSIVE
    assert none.unknown_rank == len(logged)


def _without_rank(row: offline.LoggedRow) -> offline.LoggedRow:
    return dataclasses.replace(row, rank=None)

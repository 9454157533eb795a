"""`:evaluate`: a version against the promoted one on the logged decisions.

What is estimated is the value of the policy's FIRST pick, from the rank-0
rows alone (``offline.first_picks``): an answer of several tips logs its
later picks with propensities conditional on the earlier ones, which do not
weight them as first picks, and no single-choice estimator values the whole
slate from them. ``decision_count`` is the number of first picks used; the
rows left out are counted in ``FirstPicks`` (logged by the registry).

``run`` is blocking (ONNX Runtime, numpy): call it in a thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kernel.errors import InvalidArgument
from services.ml_pipelines import logged, offline, ope
from tips.ml_pipelines.v1 import model_pb2

E = model_pb2.Estimator
KINDS: dict[int, ope.Kind] = {
    E.ESTIMATOR_IPS: ope.Kind.IPS,
    E.ESTIMATOR_SNIPS: ope.Kind.SNIPS,
    E.ESTIMATOR_DR: ope.Kind.DR,
}
ENUMS: dict[ope.Kind, Any] = {kind: value for value, kind in KINDS.items()}
VERDICTS = {
    ope.Verdict.BETTER: model_pb2.EVALUATION_VERDICT_BETTER,
    ope.Verdict.NOT_WORSE: model_pb2.EVALUATION_VERDICT_NOT_WORSE,
    ope.Verdict.WORSE: model_pb2.EVALUATION_VERDICT_WORSE,
    ope.Verdict.INCONCLUSIVE: model_pb2.EVALUATION_VERDICT_INCONCLUSIVE,
}

load = logged.load_rows
# A policy under evaluation: per round, its probability of each of ``arms``.
Probabilities = Callable[[Sequence[offline.Round]], list[np.ndarray]]


def parse_estimators(estimators: Sequence[int], primary: int) -> list[ope.Kind]:
    """The estimators to run, the primary first. Unset means IPS, SNIPS, DR with DR primary."""
    chosen: list[ope.Kind] = []
    for i, value in enumerate(estimators):
        if value not in KINDS:
            raise InvalidArgument([(f"estimators[{i}]", "must be IPS, SNIPS or DR")])
        if KINDS[value] not in chosen:
            chosen.append(KINDS[value])
    if not chosen:
        chosen = [ope.Kind.IPS, ope.Kind.SNIPS, ope.Kind.DR]
    if primary == E.ESTIMATOR_UNSPECIFIED:
        first = ope.Kind.DR if ope.Kind.DR in chosen else chosen[0]
    elif primary in KINDS and KINDS[primary] in chosen:
        first = KINDS[primary]
    else:
        raise InvalidArgument([("primary_estimator", "must be one of the estimators run")])
    return [first, *(k for k in chosen if k is not first)]


def run(
    rows: Sequence[offline.LoggedRow],
    catalog_path: str,
    target_model: Path,
    baseline_model: Path | None,
    kinds: Sequence[ope.Kind],
    confidence: float,
    min_decisions: int,
) -> tuple[model_pb2.OfflineEvaluation, offline.FirstPicks]:
    """The evaluation (without its baseline name, window and time, which the caller
    sets) and the rounds it used."""
    book = offline.TipBook.from_catalog_file(catalog_path)
    return evaluate_rounds(
        offline.rounds_of(rows, book),
        offline.VersionPolicy(target_model).probabilities,
        None if baseline_model is None else offline.VersionPolicy(baseline_model).probabilities,
        kinds,
        confidence,
        min_decisions,
    )


def evaluate_rounds(
    rounds: Sequence[offline.Round],
    target: Probabilities,
    baseline: Probabilities | None,
    kinds: Sequence[ope.Kind],
    confidence: float,
    min_decisions: int,
) -> tuple[model_pb2.OfflineEvaluation, offline.FirstPicks]:
    """``kinds`` on the first picks of ``rounds``, the target against the baseline."""
    picks = offline.first_picks(rounds)
    first = picks.rounds
    out = model_pb2.OfflineEvaluation(
        primary_estimator=ENUMS[kinds[0]],
        decision_count=len(first),
        confidence_level=confidence,
        later_pick_count=picks.later_picks,
        unknown_rank_count=picks.unknown_rank,
    )
    if not first:
        out.verdict = model_pb2.EVALUATION_VERDICT_INCONCLUSIVE
        return out, picks
    # The reward model learns from every rank (unweighted: see reward_model);
    # DR is unbiased whatever q predicts, so q sets the interval's width only.
    q = offline.predicted_rewards(offline.reward_model(rounds), first)
    t_rounds = offline.ope_rounds(target(first), first, q)
    b_rounds = None if baseline is None else offline.ope_rounds(baseline(first), first, q)
    primary_lift: ope.Estimate | None = None
    for kind in kinds:
        result, lift = _result(kind, t_rounds, b_rounds, confidence)
        if kind is kinds[0]:
            primary_lift = lift
        out.results.append(result)
    out.verdict = VERDICTS[ope.verdict(primary_lift, len(first), min_decisions)]
    return out, picks


def _result(
    kind: ope.Kind, target: ope.Rounds, baseline: ope.Rounds | None, confidence: float
) -> tuple[model_pb2.EstimatorResult, ope.Estimate | None]:
    """One estimator's result, and the lift when there is a baseline."""
    if baseline is None:
        t = ope.estimate(kind, target, confidence)
        result = model_pb2.EstimatorResult(
            estimator=ENUMS[kind], estimated_reward=t.value, ci_lower=t.lower, ci_upper=t.upper
        )
        return result, None
    c = ope.compare(kind, target, baseline, confidence)
    result = model_pb2.EstimatorResult(
        estimator=ENUMS[kind],
        estimated_reward=c.target.value,
        ci_lower=c.target.lower,
        ci_upper=c.target.upper,
        baseline_estimated_reward=c.baseline.value,
        lift=c.lift.value,
        lift_ci_lower=c.lift.lower,
        lift_ci_upper=c.lift.upper,
    )
    return result, c.lift

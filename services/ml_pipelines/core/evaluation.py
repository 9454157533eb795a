"""`:evaluate`: a version against the promoted one on the logged decisions.

``run`` is blocking (ONNX Runtime, numpy): call it in a thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
) -> model_pb2.OfflineEvaluation:
    """The evaluation (without its baseline name, window and time, which the caller sets)."""
    book = offline.TipBook.from_catalog_file(catalog_path)
    rounds = offline.rounds_of(rows, book)
    out = model_pb2.OfflineEvaluation(
        primary_estimator=ENUMS[kinds[0]],
        decision_count=len(rounds),
        confidence_level=confidence,
    )
    if not rounds:
        out.verdict = model_pb2.EVALUATION_VERDICT_INCONCLUSIVE
        return out
    q = offline.predicted_rewards(offline.reward_model(rounds), rounds)
    target = offline.ope_rounds(
        offline.VersionPolicy(target_model).probabilities(rounds), rounds, q
    )
    base = (
        None
        if baseline_model is None
        else offline.ope_rounds(
            offline.VersionPolicy(baseline_model).probabilities(rounds), rounds, q
        )
    )
    primary_lift: ope.Estimate | None = None
    for kind in kinds:
        if base is None:
            t = ope.estimate(kind, target, confidence)
            result = model_pb2.EstimatorResult(
                estimator=ENUMS[kind], estimated_reward=t.value, ci_lower=t.lower, ci_upper=t.upper
            )
        else:
            c = ope.compare(kind, target, base, confidence)
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
            if kind is kinds[0]:
                primary_lift = c.lift
        out.results.append(result)
    out.verdict = VERDICTS[ope.verdict(primary_lift, len(rounds), min_decisions)]
    return out

"""The promotion gate: a version serves only if it beats the incumbent with confidence. Pure.

The rule (docs/ml-pipelines.md, "Promotion"; docs/decisions.md, 36): with a
version promoted (the incumbent), a candidate is promoted only when the
**lower confidence bound of its DR lift over the incumbent is above 0**: the
paired interval of ``V(candidate) - V(incumbent)``, both estimated on the
same logged first picks (``ope.compare``). That is a one-sided test of "the
candidate is no better" at level (1 - confidence) / 2 (2.5% at 95%).

Not "candidate's LCB above the incumbent's point estimate": that ignores the
incumbent's own estimation error (a noisy incumbent estimate that happens to
be low lets a no-better candidate through) and the two estimates' positive
correlation (same rounds, same reward model), which the paired interval
cancels, so it is both wrong in level and needlessly weak.

The first promotion of a model (no incumbent) passes the gate. Every
promotion needs an evaluation against the version promoted now, and at
least ``min_decisions`` first picks behind it (the normal approximation).
``force`` with a reason skips all of it (the caller's business).
"""

from __future__ import annotations

from kernel.errors import FailedPrecondition
from tips.ml_pipelines.v1 import model_pb2

GATE_ESTIMATOR = model_pb2.ESTIMATOR_DR


def check(name: str, evaluation: bytes | None, incumbent: str, min_decisions: int) -> None:
    """Raises FailedPrecondition (ErrorInfo reason) unless ``name`` may be promoted
    over ``incumbent`` (a version name, or "" when none is promoted)."""
    meta = {"model_version": name, "incumbent": incumbent}
    if not evaluation:
        raise FailedPrecondition(
            f"{name} has no evaluation: run :evaluate first, or promote with force and a reason",
            reason="NOT_EVALUATED",
            metadata=meta,
        )
    result = model_pb2.OfflineEvaluation.FromString(evaluation)
    if result.baseline_version != incumbent:
        raise FailedPrecondition(
            f"{name} was evaluated against {result.baseline_version or 'no baseline'}, but "
            f"{incumbent or 'no version'} is promoted now: evaluate it again",
            reason="STALE_BASELINE",
            metadata={**meta, "baseline": result.baseline_version},
        )
    if not incumbent:
        return  # the model's first promotion: nothing to beat
    dr = next((r for r in result.results if r.estimator == GATE_ESTIMATOR), None)
    if dr is None:
        raise FailedPrecondition(
            f"the promotion gate reads the DR estimate, and {name}'s evaluation has none: "
            "evaluate it with DR among the estimators",
            reason="NO_DR_ESTIMATE",
            metadata=meta,
        )
    if result.decision_count < min_decisions:
        raise FailedPrecondition(
            f"{name} was evaluated on {result.decision_count} first picks, fewer than the "
            f"{min_decisions} the gate needs: evaluate it on a wider data window",
            reason="TOO_FEW_DECISIONS",
            metadata={**meta, "decision_count": str(result.decision_count)},
        )
    numbers = {
        **meta,
        "lift": f"{dr.lift:.6g}",
        "lift_ci_lower": f"{dr.lift_ci_lower:.6g}",
        "lift_ci_upper": f"{dr.lift_ci_upper:.6g}",
        "confidence_level": f"{result.confidence_level:g}",
    }
    interval = (
        f"DR lift {dr.lift:+.4f}, {result.confidence_level:.0%} interval "
        f"[{dr.lift_ci_lower:+.4f}, {dr.lift_ci_upper:+.4f}]"
    )
    if dr.lift_ci_upper < 0.0:
        raise FailedPrecondition(
            f"{name} is worse than {incumbent} ({interval}): promote with force and a reason "
            "to override",
            reason="EVALUATED_WORSE",
            metadata=numbers,
        )
    if dr.lift_ci_lower <= 0.0:
        raise FailedPrecondition(
            f"{name} does not beat {incumbent} with confidence ({interval}): the lower bound "
            "of the lift must be above 0; promote with force and a reason to override",
            reason="LIFT_LOWER_BOUND_NOT_ABOVE_ZERO",
            metadata=numbers,
        )

"""Logged decisions as bandit rounds, policies of model versions, offline training. Pure
(apart from reading model files).

A ``TipDecided`` carries the named context features and the candidate ids,
not the policy's rows: the rows are rebuilt here with the policy's own
feature code (``policy.features``) from the context
values and the catalog tips' features. Values the log does not carry (the
user's per-category affinities) take the feature code's defaults, so rebuilt
rows match the served ones on everything but affinity.

An answer of several tips (a slate) is logged as one row per tip: the tip at
``rank`` k > 0 was drawn from the candidates the earlier picks left, so its
propensity and candidates are conditional on them. Only rank-0 rows are
draws of the policy's first choice over all candidates; evaluation uses
those alone (``first_picks``), training uses every row (``train_step``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort

from policy import bandit, features
from policy.catalog import entry, from_file
from policy.onnx_export import INPUT, OUTPUT, STATE_FILE
from services.ml_pipelines import ope


@dataclass(frozen=True)
class LoggedRow:
    """One joined decision of the log."""

    tip: str
    user_id: str
    decide_time: datetime
    action: str  # the chosen catalog tip id
    propensity: float
    candidates: tuple[str, ...]  # catalog tip ids, in the logged order
    context: Mapping[str, float | None]
    reward: float
    model_version: str
    rank: int | None  # position in the answer, 0 = first pick; None when not logged


@dataclass(frozen=True)
class Round:
    """A logged row as the policy sees it: candidate rows and the logged outcome."""

    arms: tuple[str, ...]
    rows: np.ndarray  # [K, DIM]
    action: int  # index of the logged action in ``arms``
    propensity: float  # conditional on the earlier picks when ``rank`` > 0
    reward: float
    rank: int | None


def _num(values: Mapping[str, float | None], key: str) -> float | None:
    value = values.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def policy_context(values: Mapping[str, float | None]) -> dict[str, float]:
    """The raw keys ``features`` reads, from the context features a decision logged."""
    hour = _num(values, "hour_local")
    out: dict[str, float] = {}
    if hour is not None:
        out["local_hour"] = hour
    for src, dst in (
        ("weekday", "weekday"),
        ("in_meeting", "in_meeting"),
        ("minutes_to_next_meeting", "minutes_to_next_meeting"),
        ("free_minutes", "free_block_minutes"),
        ("steps_today", "steps_today"),
        ("sleep_minutes", "sleep_last_night_minutes"),
    ):
        value = _num(values, src)
        if value is not None:
            out[dst] = value
    usual = _num(values, "steps_usual")
    if usual is not None:
        # The recommender's "usual by now": waking hours 7..22 spread the day's steps.
        share = min(max(((hour if hour is not None else 12.0) - 7.0) / 15.0, 0.05), 1.0)
        out["steps_usual_by_now"] = usual * share
    mood = _num(values, "mood_score")
    if mood is not None:
        out["mood"] = (mood - 3.0) / 2.0
    return out


class TipBook:
    """Features of catalog tips by id, to rebuild candidate rows."""

    def __init__(self, tips: Mapping[str, features.TipFeatures]) -> None:
        self.tips = dict(tips)

    @classmethod
    def from_catalog_file(cls, path: str | Path) -> TipBook:
        _, tips = from_file(path)
        book: dict[str, features.TipFeatures] = {}
        for tip in tips:
            e = entry(tip)
            book[e.id] = features.TipFeatures(
                e.name, e.category, e.effort, e.minutes_needed, e.day_parts
            )
        return cls(book)

    def round(self, row: LoggedRow) -> Round | None:
        """The row's round; None when the logged action is not in the catalog."""
        arms = tuple(a for a in row.candidates if a in self.tips)
        if row.action not in arms or row.propensity <= 0.0:
            return None
        context = policy_context(row.context)
        ctx = features.context_features(context)
        rows = np.stack(
            [
                features.row_from_parts(ctx, features.tip_features(context, self.tips[a]))
                for a in arms
            ]
        )
        return Round(arms, rows, arms.index(row.action), row.propensity, row.reward, row.rank)


def rounds_of(rows: Sequence[LoggedRow], book: TipBook) -> list[Round]:
    """The rounds of ``rows`` whose action the catalog knows."""
    return [r for r in (book.round(row) for row in rows) if r is not None]


@dataclass(frozen=True)
class FirstPicks:
    """The rounds an evaluation of the first pick may use, and what it left out."""

    rounds: list[Round]  # rank 0
    later_picks: int  # rank > 0: propensity conditional on the earlier picks
    unknown_rank: int  # logged before the rank was kept: first or later, nobody knows


def first_picks(rounds: Sequence[Round]) -> FirstPicks:
    """The rank-0 rounds: the only ones whose propensity is the policy's unconditional
    probability of its first choice over all candidates.

    A rank-k row's candidates lack the k earlier picks and its propensity is
    conditional on them, so weighting it as a first pick (or scoring a target
    on its reduced candidates) estimates another quantity: the target's pick
    among what the logging policy left, which is worse when the logging
    policy's first picks were good.
    """
    first = [r for r in rounds if r.rank == 0]
    later = sum(1 for r in rounds if r.rank is not None and r.rank > 0)
    return FirstPicks(first, later_picks=later, unknown_rank=len(rounds) - len(first) - later)


# --- a model version as a policy -------------------------------------------------------


def session_for(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class VersionPolicy:
    """What a model version would choose: its ONNX scores plus its per-tip terms.

    The shared part comes from the version's own model.onnx (what serves);
    the per-tip residuals and the softmax parameters come from its
    ``policy.npz`` when it has one, else the defaults with no residuals.
    """

    def __init__(self, model_path: Path) -> None:
        self.session = session_for(model_path)
        state = model_path.parent / STATE_FILE
        if state.is_file():
            self.policy = bandit.Policy.from_state(state.read_bytes())
        else:
            self.policy = bandit.Policy()

    def shared_scores(self, rows: np.ndarray) -> np.ndarray:
        out = self.session.run([OUTPUT], {INPUT: rows.astype(np.float32)})[0]
        return np.asarray(out, dtype=np.float64)

    def probabilities(self, rounds: Sequence[Round]) -> list[np.ndarray]:
        """Per round, the probability of each candidate (in ``arms`` order)."""
        if not rounds:
            return []
        scores = self.shared_scores(np.vstack([r.rows for r in rounds]))
        rng = np.random.default_rng(0)  # the draw is not used, only the probabilities
        out: list[np.ndarray] = []
        start = 0
        for r in rounds:
            base = scores[start : start + len(r.arms)]
            start += len(r.arms)
            decision = self.policy.choose(list(zip(r.arms, r.rows, strict=True)), rng, base)
            out.append(np.array([decision.probabilities[a] for a in r.arms]))
        return out


def reward_model(rounds: Sequence[Round]) -> bandit.Policy:
    """A ridge + per-tip residual fit of reward on the logged rows (DR's direct method).

    Unweighted, so rows of any rank may feed it: a later pick is an observed
    (context, tip, reward) like any other, and it shows tips the logging
    policy rarely picks first, which a target may prefer.
    """
    model = bandit.Policy()
    for r in rounds:
        model.update(r.arms[r.action], r.rows[r.action], r.reward)
    return model


def predicted_rewards(model: bandit.Policy, rounds: Sequence[Round]) -> list[np.ndarray]:
    """The model's expected reward of every candidate, per round, clipped to [0, 1]."""
    out = []
    for r in rounds:
        shared = r.rows @ model.theta
        residual = np.array([model.arm_terms(a)[0] for a in r.arms])
        out.append(np.clip(shared + residual, 0.0, 1.0))
    return out


def ope_rounds(
    probabilities: Sequence[np.ndarray], rounds: Sequence[Round], q: Sequence[np.ndarray]
) -> ope.Rounds:
    """The estimators' inputs for one target policy on ``rounds``."""
    return ope.Rounds(
        weights=np.array(
            [p[r.action] / r.propensity for p, r in zip(probabilities, rounds, strict=True)]
        ),
        rewards=np.array([r.reward for r in rounds]),
        direct=np.array([float(p @ qq) for p, qq in zip(probabilities, q, strict=True)]),
        q_logged=np.array([qq[r.action] for qq, r in zip(q, rounds, strict=True)]),
    )


# --- offline training -------------------------------------------------------------------


def train_step(policy: bandit.Policy, rounds: Sequence[Round]) -> tuple[float, int]:
    """Fold ``rounds`` into ``policy``; (sum of squared errors predicted before each update, n).

    Progressive validation: each row is scored before the policy learns from
    it, so the loss is an honest out-of-sample figure. Every rank is used: the
    fit is an unweighted regression of the observed reward on (context, tip),
    which no propensity enters, so a later pick's conditional propensity
    cannot mis-weight it (as the recommender learns online from every tip).
    """
    squared = 0.0
    for r in rounds:
        arm, x = r.arms[r.action], r.rows[r.action]
        predicted = float(x @ policy.theta) + policy.arm_terms(arm)[0]
        squared += (r.reward - predicted) ** 2
        policy.update(arm, x, r.reward)
    return squared, len(rounds)

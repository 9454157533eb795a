"""The policy as it serves, so the benches measure what serves. Pure but for ONNX Runtime.

A decision scores its candidates with the shared part from the exported ONNX
model (``onnx_export``: ridge mean plus confidence bonus, frozen when the
model was exported) and the per-tip part from the live statistics
(``Policy.choose_rows(..., base_scores=...)``). The model is exported again
after every ``refresh_updates`` reward updates, so the shared part lags the
live statistics by fewer than that many rewards.

The recommender does this with its model repository and scorer
(``services/recommender/core/learning.py``: ``Learner.apply`` starts the
export when the rule says so); ``ServedPolicy`` does it in memory for the
simulator's agent (``sim.agents.OurAgent``), so ``tips bench learning`` and
``tips bench replay`` run the same combination and the same refresh rule.
The one difference: the recommender exports in the background, so the few
decisions made while an export is written still use the model before it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from policy import onnx_export, scoring
from policy.bandit import MODEL_REFRESH_UPDATES, Decision, Policy, PolicyParams
from policy.features import DIM


def refresh_due(updates_since_export: int, refresh_updates: int) -> bool:
    """Whether the model should be exported again (``refresh_updates`` 0: never)."""
    return refresh_updates > 0 and updates_since_export >= refresh_updates


class SharedModel:
    """The exported shared part, run by ONNX Runtime from memory (no repository)."""

    def __init__(self, policy: Policy) -> None:
        model = onnx_export.build_model(policy)
        self._session = ort.InferenceSession(
            model.SerializeToString(), scoring.session_options(), providers=["CPUExecutionProvider"]
        )

    def scores(self, rows: np.ndarray) -> np.ndarray:
        out = self._session.run(
            [onnx_export.OUTPUT], {onnx_export.INPUT: np.asarray(rows, dtype=np.float32)}
        )[0]
        return np.asarray(out, dtype=np.float64)


class ServedPolicy:
    """``Policy`` with the shared part from its last export, re-exported by the rule."""

    def __init__(
        self,
        params: PolicyParams | None = None,
        dim: int = DIM,
        refresh_updates: int = MODEL_REFRESH_UPDATES,
    ) -> None:
        self.policy = Policy(params, dim=dim)
        self.refresh_updates = refresh_updates
        self.model = SharedModel(self.policy)
        self.exports = 1
        self._since_export = 0

    def choose_rows(
        self, arms: Sequence[str], rows: np.ndarray, rng: np.random.Generator
    ) -> Decision:
        return self.policy.choose_rows(arms, rows, rng, base_scores=self.model.scores(rows))

    def update(self, arm: str, x: np.ndarray, reward: float) -> None:
        self.policy.update(arm, x, reward)
        self._since_export += 1
        if refresh_due(self._since_export, self.refresh_updates):
            self.model = SharedModel(self.policy)
            self.exports += 1
            self._since_export = 0

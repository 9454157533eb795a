"""The tip policy: shared ridge regression with per-tip residuals, UCB scores,
and a softmax-with-floor layer so every choice has a proper propensity. Pure.

Model of the expected reward of tip ``a`` on row ``x`` (``features.DIM``)::

    r ~ theta . x  +  beta_a

``theta`` is shared by all tips (Bayesian ridge, inverse Gram matrix kept by
Sherman-Morrison rank-one updates, so an update is O(DIM^2), ~20 us); ``beta_a``
is the tip's own residual mean (the part its features do not explain), shrunk
towards 0 with ``arm_prior`` pseudo-observations. A candidate's score is the
upper confidence bound::

    score = theta . x + alpha * sqrt(x' A^-1 x)  +  beta_a + alpha_a * sqrt(1 / (n_a + arm_prior))
            '------------ shared part -------'          + optimism * arm_prior / (n_a + arm_prior)
                                                   '------------ per-tip part --------------'

``alpha_a`` is ``arm_alpha``, or ``alpha`` when that is None (the defaults: one
width for both parts); ``optimism`` is ``arm_optimism`` (default 0): a tip's
prior pseudo-observations count that much in its score, so an unseen tip
looks a little better than its features say and the lift fades as 1/n, while
the residual the shared model fits around stays shrunk to 0. The shared
bonus is narrow (alpha 0.1, as every tuning run chose); the per-tip part's
own width and optimism are meant to keep a tip tried early and unluckily
from being written off. Both are off in the defaults (docs/policy.md).

The shared part is what the exported ONNX model computes (``onnx_export``), so
a decision can take it from ONNX Runtime or Triton and add the per-tip part
here (``choose(..., base_scores=...)``); without ``base_scores`` everything is
computed here from the live statistics. The choice is drawn from
``(1 - epsilon) * softmax(score / temperature) + epsilon / K``: the UCB bonus
drives exploration towards uncertain tips, the softmax and floor make every
probability > 0 so logged decisions support off-policy evaluation.
See docs/policy.md for why this policy, with the simulator's numbers.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from policy.features import DIM

ALGORITHM = "ridge-ucb-softmax"

# Rewards of reactions (docs/policy.md argues them). A snooze says "relevant,
# not now": worth a little, well below done, above a dismissal.
REWARD_DONE = 1.0
REWARD_SNOOZE = 0.25
REWARD_DISMISS = 0.0
# No reaction within the reward wait: as in Personalizer, the default reward 0.
REWARD_NO_REACTION = 0.0

# Rewards between exports of the shared part as an ONNX model (policy.serving).
# Each export costs ~10 ms (graph, session) and, with Triton, a model load;
# every 200 rewards keeps the shared part close to the live statistics.
MODEL_REFRESH_UPDATES = 200

# Rebuild A^-1 from A every so many updates: rank-one updates drift slowly.
_REFRESH_EVERY = 2000


@dataclass(frozen=True)
class PolicyParams:
    """Hyper-parameters. The defaults were chosen on both benches' tuning seeds
    (docs/policy.md, "The defaults"); a saved policy keeps its own."""

    alpha: float = 0.1  # width of the confidence bonus
    ridge: float = 3.0  # prior precision of theta
    arm_prior: float = 5.0  # pseudo-observations shrinking a tip's residual to 0
    temperature: float = 0.01  # softmax temperature over scores
    epsilon: float = 0.02  # uniform floor mixed into the probabilities (bounds IPS weights)
    # Width of the per-tip bonus; None: ``alpha`` (one width for both parts).
    arm_alpha: float | None = None
    # Optimism about a tip's residual: its arm_prior pseudo-observations count as
    # this much in the score (not in the residual the shared model fits around).
    arm_optimism: float = 0.0

    @property
    def arm_width(self) -> float:
        """The per-tip bonus's width: ``arm_alpha``, or ``alpha`` when it is None."""
        return self.alpha if self.arm_alpha is None else self.arm_alpha


@dataclass(frozen=True)
class Decision:
    """One choice: the arm, its propensity, and every candidate's numbers."""

    arm: str
    propensity: float
    probabilities: dict[str, float]
    scores: dict[str, float]
    explored: bool  # True when the arm is not the highest-scoring one
    means: dict[str, float]  # expected reward without the bonus (for explanations)


class Policy:
    """The online contextual-bandit policy; one instance per population it learns for."""

    def __init__(self, params: PolicyParams | None = None, dim: int = DIM) -> None:
        self.params = params or PolicyParams()
        self.dim = dim
        self._a: np.ndarray = np.eye(dim) * self.params.ridge
        self._a_inv: np.ndarray = np.eye(dim) / self.params.ridge
        self._b: np.ndarray = np.zeros(dim)
        self._theta: np.ndarray = np.zeros(dim)
        self._arm_n: dict[str, float] = {}
        self._arm_sum: dict[str, float] = {}
        self.updates = 0

    # --- the version a decision records -----------------------------------------------

    @property
    def version(self) -> str:
        """Names the statistics a decision used: algorithm and update count."""
        return f"{ALGORITHM}@{self.updates}"

    # --- scoring ---------------------------------------------------------------------

    @property
    def theta(self) -> np.ndarray:
        return self._theta

    @property
    def a_inv(self) -> np.ndarray:
        return self._a_inv

    def shared_scores(self, rows: np.ndarray) -> np.ndarray:
        """The shared part for rows [K, DIM]: what the exported ONNX model returns."""
        mean = rows @ self._theta
        var = ((rows @ self._a_inv) * rows).sum(axis=1)
        scores: np.ndarray = mean + self.params.alpha * np.sqrt(np.maximum(var, 0.0))
        return scores

    def arm_terms(self, arm: str) -> tuple[float, float]:
        """(residual mean, bonus: confidence plus optimism) of one tip."""
        n = self._arm_n.get(arm, 0.0) + self.params.arm_prior
        mean = self._arm_sum.get(arm, 0.0) / n
        return mean, float(self._arm_bonus(np.array([n]))[0])

    def _arm_bonus(self, n: np.ndarray) -> np.ndarray:
        """The per-tip bonus for counts ``n`` (observations + arm_prior)."""
        p = self.params
        bonus: np.ndarray = p.arm_width * np.sqrt(1.0 / n)
        if p.arm_optimism:
            bonus = bonus + p.arm_optimism * p.arm_prior / n
        return bonus

    def choose(
        self,
        candidates: Sequence[tuple[str, np.ndarray]],
        rng: np.random.Generator,
        base_scores: np.ndarray | None = None,
    ) -> Decision:
        """Draws one candidate; ``base_scores`` (from the ONNX model) replaces the shared part."""
        if not candidates:
            raise ValueError("candidates: at least one is needed")
        arms = [arm for arm, _ in candidates]
        return self.choose_rows(arms, np.stack([x for _, x in candidates]), rng, base_scores)

    def choose_rows(
        self,
        arms: Sequence[str],
        rows: np.ndarray,
        rng: np.random.Generator,
        base_scores: np.ndarray | None = None,
    ) -> Decision:
        """``choose`` with the candidates' rows already stacked [K, DIM] (the hot path)."""
        if not len(arms) or len(arms) != len(rows):
            raise ValueError(f"arms: {len(arms)} for {len(rows)} rows, at least one is needed")
        mean_shared = rows @ self._theta
        shared = self.shared_scores(rows) if base_scores is None else np.asarray(base_scores)
        n = np.array([self._arm_n.get(arm, 0.0) for arm in arms]) + self.params.arm_prior
        arm_mean = np.array([self._arm_sum.get(arm, 0.0) for arm in arms]) / n
        arm_bonus = self._arm_bonus(n)
        scores = shared + arm_mean + arm_bonus
        probs = self._probabilities(scores)
        # Inverse-CDF draw: rng.choice(p=...) costs more than the scoring.
        index = min(int(np.searchsorted(np.cumsum(probs), rng.random())), len(arms) - 1)
        best = int(np.argmax(scores))
        return Decision(
            arm=arms[index],
            propensity=float(probs[index]),
            probabilities=dict(zip(arms, probs.tolist(), strict=True)),
            scores=dict(zip(arms, scores.tolist(), strict=True)),
            explored=index != best and scores[index] < scores[best],
            means=dict(zip(arms, (mean_shared + arm_mean).tolist(), strict=True)),
        )

    def _probabilities(self, scores: np.ndarray) -> np.ndarray:
        z = (scores - scores.max()) / self.params.temperature
        soft = np.exp(z)
        soft /= soft.sum()
        eps = self.params.epsilon
        probs: np.ndarray = (1.0 - eps) * soft + eps / len(scores)
        normalised: np.ndarray = probs / probs.sum()
        return normalised

    # --- learning --------------------------------------------------------------------

    def update(self, arm: str, x: np.ndarray, reward: float) -> None:
        """Learns from one reaction to ``arm`` shown on row ``x``."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (self.dim,):
            raise ValueError(f"x: expected shape ({self.dim},), got {x.shape}")
        residual = reward - float(x @ self._theta)
        self._arm_n[arm] = self._arm_n.get(arm, 0.0) + 1.0
        self._arm_sum[arm] = self._arm_sum.get(arm, 0.0) + residual
        # The shared model fits what the tip's own residual does not explain.
        beta, _ = self.arm_terms(arm)
        target = reward - beta
        ax = self._a_inv @ x
        self._a_inv -= np.outer(ax, ax) / (1.0 + float(x @ ax))
        self._a += np.outer(x, x)
        self._b += target * x
        self.updates += 1
        if self.updates % _REFRESH_EVERY == 0:
            self._a_inv = np.linalg.inv(self._a)
        self._theta = self._a_inv @ self._b

    # --- persistence -----------------------------------------------------------------

    def state(self) -> bytes:
        """The statistics as bytes (npz, no pickle): what ``from_state`` reads back."""
        arms = sorted(self._arm_n)
        meta = {
            "algorithm": ALGORITHM,
            "params": self.params.__dict__,
            "dim": self.dim,
            "updates": self.updates,
        }
        buf = io.BytesIO()
        np.savez(
            buf,
            meta=np.array(json.dumps(meta)),
            a=self._a,
            b=self._b,
            arms=np.array(arms, dtype=str),
            arm_n=np.array([self._arm_n[a] for a in arms]),
            arm_sum=np.array([self._arm_sum[a] for a in arms]),
        )
        return buf.getvalue()

    @classmethod
    def from_state(cls, data: bytes) -> Policy:
        """A policy with the statistics ``state`` wrote."""
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("algorithm") != ALGORITHM:
                raise ValueError(f"state: algorithm {meta.get('algorithm')!r} is not {ALGORITHM}")
            policy = cls(PolicyParams(**meta["params"]), dim=int(meta["dim"]))
            policy._a = z["a"].copy()
            policy._b = z["b"].copy()
            policy._a_inv = np.linalg.inv(policy._a)
            policy._theta = policy._a_inv @ policy._b
            for arm, n, s in zip(z["arms"].tolist(), z["arm_n"], z["arm_sum"], strict=True):
                policy._arm_n[str(arm)] = float(n)
                policy._arm_sum[str(arm)] = float(s)
            policy.updates = int(meta["updates"])
        return policy

"""The tip policy: shared ridge regression with per-tip residuals, UCB scores,
and a softmax-with-floor layer so every choice has a proper propensity. Pure.

Model of the expected reward of tip ``a`` on row ``x`` (``features.DIM``)::

    r ~ theta . x  +  beta_a

``theta`` is **shared** by all tips; ``beta_a`` is the tip's own residual mean
(the part its features do not explain). Both come from one ridge regression on
``[x, one-hot(a)]``: prior precision ``ridge`` on ``theta`` and ``arm_prior`` on
each ``beta_a``, fitted jointly (the exact posterior mean). The tips' means are
profiled out: given ``theta``, ``beta_a = (R_a - S_a . theta) / (n_a + arm_prior)``
(``R_a``, ``S_a``: the tip's sums of rewards and of rows), and ``theta``'s own
precision is ``P = A - sum_a S_a S_a' / (n_a + arm_prior)``. A reward changes
``P`` by one rank-one term, ``m/(m+1) v v'`` with ``v = x - S_a/m``, so ``P^-1``
is kept by Sherman-Morrison (O(DIM^2), ~40 us) and rebuilt every 2000 updates
against drift; ``P^-1`` is ``theta``'s posterior covariance (``a_inv``). A
candidate's score is the upper confidence bound::

    score = theta . x + alpha * sqrt(x' P^-1 x)  +  beta_a + alpha_a * sqrt(1 / (n_a + arm_prior))
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

Until decision 43 the two parts were fitted one after the other: a reward's
residual against the ``theta`` of that moment went into ``beta_a`` for good,
and ``theta`` learned from the reward minus that ``beta_a``. Early residuals,
taken against a ``theta`` near 0, stayed in a tip's mean (docs/policy.md, "The
joint fit"). A state written then loads with the scores it had
(``from_state``).

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

# Rebuild P^-1 from the sums every so many updates: rank-one updates drift slowly.
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
        ridge = self.params.ridge
        self._a: np.ndarray = np.eye(dim) * ridge  # ridge I + sum x x'
        self._b: np.ndarray = np.zeros(dim)  # sum r x
        # theta's precision with the tips' means profiled out (P), its inverse, and
        # P theta = q.
        self._p_inv: np.ndarray = np.eye(dim) / ridge
        self._q: np.ndarray = np.zeros(dim)
        self._theta: np.ndarray = np.zeros(dim)
        # Per tip, by the index ``_arm_index`` gives: count, sum of rewards, sum of rows.
        self._arm_index: dict[str, int] = {}
        self._count: np.ndarray = np.zeros(0)
        self._reward_sum: np.ndarray = np.zeros(0)
        self._row_sum: np.ndarray = np.zeros((0, dim))
        # What a decision looks up per candidate: count and residual mean at theta.
        self._arm_n: dict[str, float] = {}
        self._arm_mean: dict[str, float] = {}
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
        """theta's posterior covariance over the noise variance: ``P^-1``."""
        return self._p_inv

    def shared_scores(self, rows: np.ndarray) -> np.ndarray:
        """The shared part for rows [K, DIM]: what the exported ONNX model returns."""
        mean = rows @ self._theta
        var = ((rows @ self._p_inv) * rows).sum(axis=1)
        scores: np.ndarray = mean + self.params.alpha * np.sqrt(np.maximum(var, 0.0))
        return scores

    def arm_terms(self, arm: str) -> tuple[float, float]:
        """(residual mean, bonus: confidence plus optimism) of one tip."""
        n = self._arm_n.get(arm, 0.0) + self.params.arm_prior
        return self._arm_mean.get(arm, 0.0), float(self._arm_bonus(np.array([n]))[0])

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
        arm_mean = np.array([self._arm_mean.get(arm, 0.0) for arm in arms])
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
        i = self._arm_index.get(arm)
        if i is None:
            i = self._add_arm(arm)
        m = self._count[i] + self.params.arm_prior
        rows, rewards = self._row_sum[i], self._reward_sum[i]
        # P gains (m / (m + 1)) v v' with v the row minus the tip's shrunk mean row.
        v = x - rows / m
        pv = self._p_inv @ v
        c = m / (m + 1.0)
        self._p_inv -= np.outer(pv, pv) * (c / (1.0 + c * float(v @ pv)))
        self._q += reward * x + rows * (rewards / m) - (rows + x) * ((rewards + reward) / (m + 1.0))
        self._a += np.outer(x, x)
        self._b += reward * x
        self._count[i] += 1.0
        self._reward_sum[i] += reward
        self._row_sum[i] += x
        self._arm_n[arm] = float(self._count[i])
        self.updates += 1
        if self.updates % _REFRESH_EVERY == 0:
            self._refit()
        self._solve()

    def _add_arm(self, arm: str) -> int:
        i = self._arm_index[arm] = len(self._count)
        self._count = np.append(self._count, 0.0)
        self._reward_sum = np.append(self._reward_sum, 0.0)
        self._row_sum = np.vstack([self._row_sum, np.zeros(self.dim)])
        return i

    def _refit(self) -> None:
        """``P^-1`` and ``q`` from the sums: rank-one updates drift slowly."""
        m = self._count + self.params.arm_prior
        scaled = self._row_sum / m[:, None]
        self._p_inv = np.linalg.inv(self._a - self._row_sum.T @ scaled)
        self._q = self._b - scaled.T @ self._reward_sum

    def _solve(self) -> None:
        """theta from ``P^-1 q``, then every tip's residual mean at that theta."""
        self._theta = self._p_inv @ self._q
        means = (self._reward_sum - self._row_sum @ self._theta) / (
            self._count + self.params.arm_prior
        )
        self._arm_mean = dict(zip(self._arm_index, means.tolist(), strict=True))

    # --- persistence -----------------------------------------------------------------

    def state(self) -> bytes:
        """The statistics as bytes (npz, no pickle): what ``from_state`` reads back."""
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
            arms=np.array(list(self._arm_index), dtype=str),
            arm_n=self._count,
            arm_reward=self._reward_sum,
            arm_rows=self._row_sum,
        )
        return buf.getvalue()

    @classmethod
    def from_state(cls, data: bytes) -> Policy:
        """A policy with the statistics ``state`` wrote.

        A state from before the joint fit (``arm_sum``: residual sums, ``b``: rows
        times reward minus the tip's mean then) loads with the scores it had: its
        residual sums become reward sums of tips whose rows sum to 0, so ``theta``
        is ``A^-1 b`` and each tip's mean its old one; what it learns from then on
        is fitted jointly."""
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("algorithm") != ALGORITHM:
                raise ValueError(f"state: algorithm {meta.get('algorithm')!r} is not {ALGORITHM}")
            policy = cls(PolicyParams(**meta["params"]), dim=int(meta["dim"]))
            arms = [str(a) for a in z["arms"].tolist()]
            policy._a = z["a"].copy()
            policy._b = z["b"].copy()
            policy._arm_index = {arm: i for i, arm in enumerate(arms)}
            policy._count = np.asarray(z["arm_n"], dtype=np.float64).copy()
            if "arm_rows" in z.files:
                policy._reward_sum = np.asarray(z["arm_reward"], dtype=np.float64).copy()
                policy._row_sum = np.asarray(z["arm_rows"], dtype=np.float64).copy()
            else:
                policy._reward_sum = np.asarray(z["arm_sum"], dtype=np.float64).copy()
                policy._row_sum = np.zeros((len(arms), policy.dim))
            policy._arm_n = dict(zip(arms, policy._count.tolist(), strict=True))
            policy.updates = int(meta["updates"])
        policy._refit()
        policy._solve()
        return policy

"""The tip policy: shared ridge regression with per-tip residuals, UCB scores,
and a softmax-with-floor layer so every choice has a proper propensity. Pure.

Model of the expected reward of tip ``a`` on row ``x`` (``features.DIM``)::

    r ~ theta . x  +  w_a . c        c = [1, x[context]]  (tip_context), else [1]

``theta`` is shared by all tips (Bayesian ridge, inverse Gram matrix kept by
Sherman-Morrison rank-one updates, so an update is O(DIM^2), ~20 us); ``beta_a``
is the tip's own residual (the part its features do not explain): a small
ridge regression per tip on ``c``, shrunk towards 0 with prior precision
``arm_prior``. Without ``tip_context``, ``c = [1]`` and ``w_a`` is the tip's
residual mean over ``n_a + arm_prior`` pseudo-observations; with it, ``c`` adds
the round's context columns, so a tip's residual may depend on the context
(hybrid LinUCB, Li et al. 2010; what VW's ``-q`` with the tip id does). A
candidate's score is the upper confidence bound::

    score = theta . x + alpha * sqrt(x' A^-1 x)  +  w_a . c + alpha * sqrt(c' B_a^-1 c)
            '------------ shared part -------'     '-------- per-tip part ---------'

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

from policy.features import CONTEXT_COLUMNS, DIM

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
_ONE = np.ones(1)  # a tip's input without tip_context


@dataclass(frozen=True)
class PolicyParams:
    """Hyper-parameters (tuned on the simulator, docs/policy.md)."""

    alpha: float = 0.3  # width of the confidence bonus
    ridge: float = 1.0  # prior precision of theta
    arm_prior: float = 5.0  # pseudo-observations shrinking a tip's residual to 0
    temperature: float = 0.03  # softmax temperature over scores
    epsilon: float = 0.02  # uniform floor mixed into the probabilities
    tip_context: bool = False  # per-tip weights on the context, not only an intercept


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

    def __init__(
        self,
        params: PolicyParams | None = None,
        dim: int = DIM,
        context: Sequence[int] | None = None,
    ) -> None:
        """``context``: the row's columns that are the round's context, bias excluded
        (default: ``features.CONTEXT_COLUMNS`` for ``features.DIM`` rows, else none);
        only ``tip_context`` uses them."""
        self.params = params or PolicyParams()
        self.dim = dim
        if context is None:
            context = CONTEXT_COLUMNS if dim == DIM else ()
        self.context: tuple[int, ...] = tuple(int(c) for c in context)
        if any(not 0 <= c < dim for c in self.context):
            raise ValueError(f"context: columns {self.context} do not fit rows of {dim}")
        self._a: np.ndarray = np.eye(dim) * self.params.ridge
        self._a_inv: np.ndarray = np.eye(dim) / self.params.ridge
        self._b: np.ndarray = np.zeros(dim)
        self._theta: np.ndarray = np.zeros(dim)
        self._tips = _TipModels(
            1 + len(self.context) if self.params.tip_context else 1, self.params.arm_prior
        )
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

    def tip_inputs(self, rows: np.ndarray) -> np.ndarray:
        """The per-tip models' inputs ``c`` for rows [K, DIM]: [K, 1] or [K, 1 + context]."""
        ones = np.ones((len(rows), 1))
        if self._tips.width == 1:
            return ones
        return np.hstack([ones, rows[:, self.context]])

    def tip_means(self, arms: Sequence[str], rows: np.ndarray) -> np.ndarray:
        """The per-tip part without its bonus (``w_a . c``) for each candidate."""
        mean, _ = self._tips.terms(self._tips.slots(arms), self.tip_inputs(rows))
        return mean

    def expected(self, arms: Sequence[str], rows: np.ndarray) -> np.ndarray:
        """Expected reward of each candidate, no bonus: ``theta . x + w_a . c``."""
        return np.asarray(rows @ self._theta + self.tip_means(arms, rows))

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
        arm_mean, arm_var = self._tips.terms(self._tips.slots(arms), self.tip_inputs(rows))
        scores = shared + arm_mean + self.params.alpha * np.sqrt(arm_var)
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
        c = self.tip_inputs(x[None, :])[0] if self._tips.width > 1 else _ONE
        # The shared model fits what the tip's own residual does not explain.
        target = reward - self._tips.update(arm, c, residual)
        ax = self._a_inv @ x
        self._a_inv -= np.outer(ax, ax) / (1.0 + float(x @ ax))
        self._a += np.outer(x, x)
        self._b += target * x
        self.updates += 1
        if self.updates % _REFRESH_EVERY == 0:
            self._a_inv = np.linalg.inv(self._a)
            self._tips.reinvert()
        self._theta = self._a_inv @ self._b

    # --- persistence -----------------------------------------------------------------

    def state(self) -> bytes:
        """The statistics as bytes (npz, no pickle): what ``from_state`` reads back.

        ``arm_n`` and ``arm_sum`` are each tip's count and residual sum (the
        intercept's statistics, all a ``[1]`` model has); with ``tip_context``
        ``arm_gram`` and ``arm_b`` hold the whole per-tip regressions."""
        arms, gram, b = self._tips.statistics()
        meta = {
            "algorithm": ALGORITHM,
            "params": self.params.__dict__,
            "dim": self.dim,
            "context": list(self.context),
            "updates": self.updates,
        }
        arrays: dict[str, np.ndarray] = {
            "meta": np.array(json.dumps(meta)),
            "a": self._a,
            "b": self._b,
            "arms": np.array(arms, dtype=str),
            "arm_n": gram[:, 0, 0],
            "arm_sum": b[:, 0],
        }
        if self._tips.width > 1:
            arrays.update(arm_gram=gram, arm_b=b)
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub: allow_pickle
        return buf.getvalue()

    @classmethod
    def from_state(cls, data: bytes) -> Policy:
        """A policy with the statistics ``state`` wrote (also before ``tip_context``)."""
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("algorithm") != ALGORITHM:
                raise ValueError(f"state: algorithm {meta.get('algorithm')!r} is not {ALGORITHM}")
            policy = cls(
                PolicyParams(**meta["params"]), dim=int(meta["dim"]), context=meta.get("context")
            )
            policy._a = z["a"].copy()
            policy._b = z["b"].copy()
            policy._a_inv = np.linalg.inv(policy._a)
            policy._theta = policy._a_inv @ policy._b
            arms = [str(a) for a in z["arms"].tolist()]
            if policy._tips.width > 1:
                gram, b = z["arm_gram"], z["arm_b"]
            else:
                gram, b = z["arm_n"].reshape(-1, 1, 1), z["arm_sum"].reshape(-1, 1)
            policy._tips.load(arms, gram, b)
            policy.updates = int(meta["updates"])
        return policy


class _TipModels:
    """Every tip's ridge regression on its input ``c`` (width 1: an intercept), kept
    in arrays so a decision gathers its candidates' terms in one indexing step.

    Per tip: ``gram = sum c c'``, ``b = sum residual * c``, ``inv = (arm_prior I +
    gram)^-1`` (Sherman-Morrison per update), ``w = inv b``. Slot 0 is the prior,
    what a tip never rewarded scores; tips take slots 1, 2, ... as they first learn.
    """

    def __init__(self, width: int, prior: float) -> None:
        self.width = width
        self.prior = prior
        self._slot: dict[str, int] = {}
        self._arms: list[str] = []
        self._gram, self._b, self._inv, self._w = self._arrays(64)

    def _arrays(self, capacity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(gram, b, inv, w) for ``capacity`` tips besides the prior, all at the prior."""
        m, size = self.width, capacity + 1
        inv = np.tile(np.eye(m) / self.prior, (size, 1, 1))
        return np.zeros((size, m, m)), np.zeros((size, m)), inv, np.zeros((size, m))

    def _grow(self, capacity: int) -> None:
        used = 1 + len(self._arms)
        gram, b, inv, w = self._arrays(capacity)
        gram[:used], b[:used] = self._gram[:used], self._b[:used]
        inv[:used], w[:used] = self._inv[:used], self._w[:used]
        self._gram, self._b, self._inv, self._w = gram, b, inv, w

    def slots(self, arms: Sequence[str]) -> np.ndarray:
        slot = self._slot
        return np.array([slot.get(arm, 0) for arm in arms], dtype=np.intp)

    def terms(self, slots: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(``w . c``, ``c' inv c``) per candidate."""
        if self.width == 1:  # c == [1]
            return self._w[slots, 0], self._inv[slots, 0, 0]
        mean = np.einsum("km,km->k", self._w[slots], c)
        var = np.einsum("km,kmn,kn->k", c, self._inv[slots], c)
        return mean, np.maximum(var, 0.0)

    def _slot_of(self, arm: str) -> int:
        slot = self._slot.get(arm)
        if slot is None:
            if len(self._arms) + 1 == len(self._w):
                self._grow(2 * len(self._arms))
            self._arms.append(arm)
            slot = self._slot[arm] = len(self._arms)
        return slot

    def update(self, arm: str, c: np.ndarray, residual: float) -> float:
        """Folds one residual in; returns the tip's new ``w . c``."""
        s = self._slot_of(arm)
        if self.width == 1:  # c == [1]: a count and a sum, in scalars
            n = self._gram[s, 0, 0] = self._gram[s, 0, 0] + 1.0
            total = self._b[s, 0] = self._b[s, 0] + residual
            inv = self._inv[s, 0, 0] = 1.0 / (self.prior + n)
            w = self._w[s, 0] = total * inv
            return float(w)
        self._gram[s] += np.outer(c, c)
        self._b[s] += residual * c
        v = self._inv[s] @ c
        self._inv[s] -= np.outer(v, v) / (1.0 + float(c @ v))
        self._w[s] = self._inv[s] @ self._b[s]
        return float(self._w[s] @ c)

    def reinvert(self) -> None:
        """Rebuilds every ``inv`` from ``gram`` (rank-one updates drift slowly)."""
        used = slice(1, 1 + len(self._arms))
        self._inv[used] = np.linalg.inv(self._gram[used] + self.prior * np.eye(self.width))
        self._w[used] = np.einsum("kmn,kn->km", self._inv[used], self._b[used])

    def statistics(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(tips, gram [N, m, m], b [N, m]) in slot order."""
        used = slice(1, 1 + len(self._arms))
        return list(self._arms), self._gram[used].copy(), self._b[used].copy()

    def load(self, arms: Sequence[str], gram: np.ndarray, b: np.ndarray) -> None:
        if gram.shape != (len(arms), self.width, self.width) or b.shape != (len(arms), self.width):
            raise ValueError(
                f"state: per-tip statistics of shape {gram.shape}, expected"
                f" ({len(arms)}, {self.width}, {self.width})"
            )
        self._slot, self._arms = {}, []
        self._gram, self._b, self._inv, self._w = self._arrays(max(64, len(arms)))
        for arm in arms:
            self._slot_of(arm)
        used = slice(1, 1 + len(arms))
        self._gram[used], self._b[used] = gram, b
        self.reinvert()

"""Policies under evaluation, behind one small interface: our policy, uniform
random, and Vowpal Wabbit ``cb_explore_adf`` on the same feature rows.

``act(arms, rows, rng) -> (index, propensity)`` then ``learn(index, reward)``
for the round just acted on. Used by bench/learning.py and bench/replay.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from policy.bandit import MODEL_REFRESH_UPDATES, Policy, PolicyParams
from policy.serving import ServedPolicy


class Agent(Protocol):
    name: str

    def act(
        self, arms: Sequence[str], rows: np.ndarray, rng: np.random.Generator
    ) -> tuple[int, float]: ...

    def learn(self, index: int, reward: float) -> None: ...


class OurAgent:
    """Our policy as it serves (``policy.serving``): the shared part from the last
    exported ONNX model, run by ONNX Runtime, the per-tip part live, the model
    exported again every ``refresh_updates`` rewards, as the recommender does."""

    def __init__(
        self,
        dim: int,
        params: PolicyParams | None = None,
        name: str = "ours",
        refresh_updates: int = MODEL_REFRESH_UPDATES,
    ) -> None:
        self.name = name
        self.served = ServedPolicy(params, dim=dim, refresh_updates=refresh_updates)
        self.policy: Policy = self.served.policy
        self._last: tuple[Sequence[str], np.ndarray] | None = None

    def act(
        self, arms: Sequence[str], rows: np.ndarray, rng: np.random.Generator
    ) -> tuple[int, float]:
        decision = self.served.choose_rows(list(arms), rows, rng)
        self._last = (arms, rows)
        index = list(arms).index(decision.arm)
        return index, decision.propensity

    def learn(self, index: int, reward: float) -> None:
        assert self._last is not None
        arms, rows = self._last
        self.served.update(arms[index], rows[index], reward)


class UniformAgent:
    name = "uniform"

    def act(
        self, arms: Sequence[str], rows: np.ndarray, rng: np.random.Generator
    ) -> tuple[int, float]:
        return int(rng.integers(len(arms))), 1.0 / len(arms)

    def learn(self, index: int, reward: float) -> None:
        pass


# VW namespaces (the first letter is what ``-q``/``--interactions`` name): the
# row, the context part of the row on the shared line, the tip id.
NS_ROW = "a"
NS_SHARED = "s"
NS_ID = "i"


def _feature_lists(rows: np.ndarray) -> list[str]:
    """Each row's nonzero features as VW text (``f<column>:<value>``), all rows at once:
    a round has few distinct values, so each is formatted once (``.6g``)."""
    r, c = np.nonzero(rows)
    distinct, which = np.unique(rows[r, c], return_inverse=True)
    text = [f"{v:.6g}" for v in distinct.tolist()]
    tokens = [f"f{j}:" + text[k] for j, k in zip(c.tolist(), which.tolist(), strict=True)]
    lines: list[str] = []
    start = 0
    for end in np.cumsum(np.bincount(r, minlength=len(rows))).tolist():
        lines.append(" ".join(tokens[start:end]))
        start = end
    return lines


class VwAgent:
    """VW ``--cb_explore_adf``: one action line per candidate with its nonzero
    features (the same rows ours sees); VW minimises cost, so cost = -reward.

    Namespaces: ``|a`` the row, ``|i`` the tip id (``with_arm_id``). With
    ``context_columns`` (the row's columns that are the round's context, equal on
    every candidate: ``policy.features.CONTEXT_COLUMNS`` for its rows) those move to a
    ``shared |s`` line, which VW adds to every action: the same linear model, but
    ``-q sa`` / ``-q si`` can then cross the context with the rest of the row /
    with the tip id."""

    def __init__(
        self,
        options: str = "",
        name: str = "vw",
        with_arm_id: bool = False,
        context_columns: Sequence[int] | None = None,
    ) -> None:
        from vowpalwabbit import Workspace  # type: ignore[import-untyped]  # dev dependency

        self.name = name
        self.options = f"--cb_explore_adf --quiet {options}".strip()
        self._vw = Workspace(self.options)
        self._with_arm_id = with_arm_id
        self._context = None if context_columns is None else list(context_columns)
        self._lines: list[str] = []
        self._pmf: list[float] = []

    def _example(self, arms: Sequence[str], rows: np.ndarray) -> list[str]:
        """The multi-line example: [shared line,] one line per candidate."""
        shared: list[str] = []
        if self._context is not None:
            context = self._context
            if not (rows[:, context] == rows[0, context]).all():
                raise ValueError("context_columns: differ between the candidates")
            head = np.zeros((1, rows.shape[1]))
            head[0, context] = rows[0, context]
            shared = [f"shared |{NS_SHARED} {_feature_lists(head)[0]}"]
            rows = rows.copy()
            rows[:, context] = 0.0
        feats = _feature_lists(rows)
        if self._with_arm_id:
            return shared + [
                f"|{NS_ROW} {f} |{NS_ID} {a}" for f, a in zip(feats, arms, strict=True)
            ]
        return shared + [f"|{NS_ROW} {f}" for f in feats]

    def act(
        self, arms: Sequence[str], rows: np.ndarray, rng: np.random.Generator
    ) -> tuple[int, float]:
        self._lines = self._example(arms, rows)
        pmf = np.asarray(self._vw.predict(self._lines), dtype=np.float64)
        pmf = pmf / pmf.sum()
        index = min(int(np.searchsorted(np.cumsum(pmf), rng.random())), len(arms) - 1)
        self._pmf = pmf.tolist()
        return index, float(pmf[index])

    def learn(self, index: int, reward: float) -> None:
        lines = list(self._lines)
        at = index + (1 if self._context is not None else 0)
        lines[at] = f"0:{-reward:.6g}:{self._pmf[index]:.6g} {lines[at]}"
        self._vw.learn(lines)

    def close(self) -> None:
        self._vw.finish()

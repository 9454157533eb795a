"""Policies under evaluation, behind one small interface: our policy, uniform
random, and Vowpal Wabbit ``cb_explore_adf`` on the same feature rows.

``act(arms, rows, rng) -> (index, propensity)`` then ``learn(index, reward)``
for the round just acted on. Used by bench/learning.py and bench/replay.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from policy.bandit import Policy, PolicyParams


class Agent(Protocol):
    name: str

    def act(
        self, arms: Sequence[str], rows: np.ndarray, rng: np.random.Generator
    ) -> tuple[int, float]: ...

    def learn(self, index: int, reward: float) -> None: ...


class OurAgent:
    def __init__(self, dim: int, params: PolicyParams | None = None, name: str = "ours") -> None:
        self.name = name
        self.policy = Policy(params, dim=dim)
        self._last: tuple[Sequence[str], np.ndarray] | None = None

    def act(
        self, arms: Sequence[str], rows: np.ndarray, rng: np.random.Generator
    ) -> tuple[int, float]:
        decision = self.policy.choose(list(zip(arms, rows, strict=True)), rng)
        self._last = (arms, rows)
        index = list(arms).index(decision.arm)
        return index, decision.propensity

    def learn(self, index: int, reward: float) -> None:
        assert self._last is not None
        arms, rows = self._last
        self.policy.update(arms[index], rows[index], reward)


class UniformAgent:
    name = "uniform"

    def act(
        self, arms: Sequence[str], rows: np.ndarray, rng: np.random.Generator
    ) -> tuple[int, float]:
        return int(rng.integers(len(arms))), 1.0 / len(arms)

    def learn(self, index: int, reward: float) -> None:
        pass


class VwAgent:
    """VW ``--cb_explore_adf``: one action line per candidate with its nonzero
    features (the same rows ours sees); VW minimises cost, so cost = -reward."""

    def __init__(self, options: str = "", name: str = "vw", with_arm_id: bool = False) -> None:
        from vowpalwabbit import Workspace  # type: ignore[import-untyped]  # dev dependency

        self.name = name
        self.options = f"--cb_explore_adf --quiet {options}".strip()
        self._vw = Workspace(self.options)
        self._with_arm_id = with_arm_id
        self._lines: list[str] = []
        self._pmf: list[float] = []

    def _action_line(self, arm: str, row: np.ndarray) -> str:
        nz = np.flatnonzero(row)
        feats = " ".join(f"f{j}:{row[j]:.6g}" for j in nz)
        arm_id = f" |i {arm}" if self._with_arm_id else ""
        return f"|a {feats}{arm_id}"

    def act(
        self, arms: Sequence[str], rows: np.ndarray, rng: np.random.Generator
    ) -> tuple[int, float]:
        self._lines = [self._action_line(a, r) for a, r in zip(arms, rows, strict=True)]
        pmf = np.asarray(self._vw.predict(self._lines), dtype=np.float64)
        pmf = pmf / pmf.sum()
        index = min(int(np.searchsorted(np.cumsum(pmf), rng.random())), len(arms) - 1)
        self._pmf = pmf.tolist()
        return index, float(pmf[index])

    def learn(self, index: int, reward: float) -> None:
        lines = list(self._lines)
        lines[index] = f"0:{-reward:.6g}:{self._pmf[index]:.6g} {lines[index]}"
        self._vw.learn(lines)

    def close(self) -> None:
        self._vw.finish()

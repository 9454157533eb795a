"""The policy the benches measure is the one that serves (policy.serving)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from policy import onnx_export
from policy.bandit import Policy
from policy.scoring import OnnxScorer
from policy.serving import ServedPolicy, SharedModel, refresh_due
from sim.agents import OurAgent

pytestmark = pytest.mark.unit

DIM = 12
ARMS = [f"tip_{i}" for i in range(8)]


def _rows(rng: np.random.Generator, k: int = len(ARMS)) -> np.ndarray:
    return rng.normal(size=(k, DIM))


def _learn(policy: Policy | ServedPolicy, rng: np.random.Generator, n: int) -> None:
    for i in range(n):
        rows = _rows(rng)
        policy.update(ARMS[i % len(ARMS)], rows[i % len(ARMS)], float(rng.random() < 0.4))


def test_the_in_memory_model_scores_as_the_recommenders_repository_model(tmp_path: Path) -> None:
    """The bench's shared part and the recommender's (exported, loaded by OnnxScorer) agree."""
    rng = np.random.default_rng(3)
    policy = Policy(dim=DIM)
    _learn(policy, rng, 150)
    onnx_export.export(policy, tmp_path)
    rows = _rows(rng)
    served = SharedModel(policy).scores(rows)
    recommender = OnnxScorer(tmp_path).score_sync(rows)
    assert np.array_equal(served, recommender)
    assert np.allclose(served, policy.shared_scores(rows), atol=1e-4)  # float32 vs float64


def test_served_decisions_are_the_recommenders_decisions(tmp_path: Path) -> None:
    """Same statistics, same model, same draws: the same arm and the same propensities."""
    rng = np.random.default_rng(5)
    served = ServedPolicy(dim=DIM, refresh_updates=50)
    _learn(served, rng, 120)  # two refreshes, then 20 updates the model does not have yet
    assert served.exports == 3
    # The recommender: its live statistics, its last exported model (after 100 updates).
    live = Policy.from_state(served.policy.state())
    at_export = Policy(dim=DIM)
    replay = np.random.default_rng(5)
    _learn(at_export, replay, 100)
    onnx_export.export(at_export, tmp_path)
    scorer = OnnxScorer(tmp_path)
    for seed in range(20):
        rows = _rows(np.random.default_rng(100 + seed))
        ours = served.choose_rows(ARMS, rows, np.random.default_rng(seed))
        theirs = live.choose_rows(
            ARMS, rows, np.random.default_rng(seed), base_scores=scorer.score_sync(rows)
        )
        assert ours.arm == theirs.arm
        assert ours.probabilities == pytest.approx(theirs.probabilities, abs=1e-12)


def test_the_shared_part_moves_only_at_a_refresh() -> None:
    rng = np.random.default_rng(9)
    served = ServedPolicy(dim=DIM, refresh_updates=10)
    rows = _rows(rng)
    before = served.model.scores(rows)
    _learn(served, rng, 9)
    assert np.array_equal(served.model.scores(rows), before)  # frozen between exports
    _learn(served, rng, 1)
    assert served.exports == 2
    assert not np.allclose(served.model.scores(rows), before)
    assert np.allclose(served.model.scores(rows), served.policy.shared_scores(rows), atol=1e-4)


def test_the_refresh_rule() -> None:
    assert not refresh_due(199, 200) and refresh_due(200, 200) and refresh_due(250, 200)
    assert not refresh_due(10_000, 0)  # 0: never by count


def test_the_benchs_agent_runs_the_serving_path() -> None:
    agent = OurAgent(DIM, refresh_updates=5)
    rng = np.random.default_rng(1)
    for _ in range(12):
        index, propensity = agent.act(ARMS, _rows(rng), rng)
        assert 0 < propensity <= 1
        agent.learn(index, 1.0)
    assert agent.served.exports == 3  # the model, then a refresh after 5 and after 10

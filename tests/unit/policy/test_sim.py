"""The simulator: proper reaction probabilities, signals that are valid
protos, and `tips bench learning` producing its JSON and plot."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, date
from pathlib import Path

import numpy as np
import pytest

from sim.reactions import DISMISS, DONE, SNOOZE
from sim.signals import day_signals, reaction_signal
from sim.users import make_day, make_user
from sim.world import World
from tips.events.v1 import signal_pb2

ROOT = Path(__file__).resolve().parents[3]


def test_rounds_carry_proper_probabilities_and_an_oracle() -> None:
    world = World(users=3, days=2, decisions_per_day=4)
    rounds = list(world.rounds())
    assert len(rounds) == world.n_rounds == 24
    for rnd in rounds:
        for p in rnd.probabilities:
            assert sum(p.values()) == pytest.approx(1.0)
            assert all(0.0 <= p[k] <= 1.0 for k in (DONE, SNOOZE, DISMISS))
        assert rnd.rows.shape[0] == len(world.arms)
    best = np.stack([r.expected for r in rounds]).max(axis=1)
    assert (best > np.stack([r.expected for r in rounds]).mean(axis=1)).all()


def test_a_day_becomes_signals() -> None:
    rng = np.random.default_rng(0)
    user = make_user(0, rng)
    day = make_day(user, 0, rng, decisions=3)  # a Monday: meetings likely
    signals = day_signals(user, day, date(2026, 3, 2))
    kinds = {s.kind for s in signals}
    assert {signal_pb2.SIGNAL_KIND_SLEEP, signal_pb2.SIGNAL_KIND_STEPS} <= kinds
    for s in signals:
        assert s.WhichOneof("payload") and s.client_signal_id and s.HasField("start_time")
    assert len({s.client_signal_id for s in signals}) == len(signals)
    snooze = reaction_signal(user, "users/u/tips/t1", SNOOZE, signals[0].end_time.ToDatetime(UTC))
    assert snooze.tip_reaction.reaction == signal_pb2.TIP_REACTION_SNOOZE
    assert snooze.tip_reaction.HasField("snooze_until")


def test_bench_learning_prints_json_and_plots(tmp_path: Path) -> None:
    plot = tmp_path / "learning.png"
    out = _bench(
        "learning",
        *("--users", "3", "--days", "4", "--tune-budget", "4", "--tune-passes", "2"),
        *("--plot", str(plot)),
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["rounds"] == 3 * 4 * 6
    assert result["tuning"]["budget"] == 4 and result["tuning"]["seeds"] == [100, 101]
    assert len(result["tuning"]["vw"]["tried"]) == len(result["tuning"]["ours"]["tried"]) == 4
    assert result["vw_tuned_config"].startswith("--cb_explore_adf")
    assert set(result["seeds"]) == {"1", "2"}
    assert set(result["ours_minus_vw_tuned"]["1"]) == {"ours", "ours_tuned"}
    for seed in result["seeds"].values():
        policies = seed["policies"]
        assert {
            "ours",
            "ours_tuned",
            "uniform",
            "vw_cb_explore_adf",
            "vw_tuned",
            "best_single_tip",
        } <= set(policies)
        for numbers in policies.values():
            assert numbers["regret_vs_oracle"] >= 0
    assert "tune pass 2/2" in out.stderr
    assert plot.stat().st_size > 0


def test_bench_learning_without_tuning_or_vw(tmp_path: Path) -> None:
    out = _bench(
        "learning",
        *("--users", "2", "--days", "2", "--seeds", "3", "--tune-budget", "0", "--no-vw"),
        *("--plot", str(tmp_path / "learning.png")),
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result["seeds"]["3"]["policies"]) == {"ours", "uniform", "best_single_tip"}
    assert "tune pass" not in out.stderr


def test_bench_replicas_sharing_at_once_learns_exactly_as_one(tmp_path: Path) -> None:
    """Two replicas folding every reward at once fold the same rewards in the same
    order as one recommender: the same decisions, the same reward."""
    out = _bench(
        "replicas",
        *("--users", "3", "--days", "3", "--seeds", "1", "--lag", "0", "5"),
        *("--plot", str(tmp_path / "replicas.png")),
    )
    assert out.returncode == 0, out.stderr
    rewards = json.loads(out.stdout)["average_expected_reward"]["1"]
    assert set(rewards) == {"one", "two_shared_lag0", "two_shared_lag5", "two_isolated"}
    assert rewards["two_shared_lag0"] == rewards["one"]
    assert (tmp_path / "replicas.png").stat().st_size > 0


def _bench(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{name}.py"), *args],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )  # fmt: skip

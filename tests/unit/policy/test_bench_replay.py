"""`tips bench replay` runs on logs the simulator generates, tunes both sides on
rounds it does not evaluate, and rejects bad logs with a message naming the file
and column."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import replay
from sim.agents import Agent, UniformAgent, VwAgent
from sim.tuning import Layout, make_agent

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "bench" / "replay.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )


def test_replay_runs_on_generated_logs(tmp_path: Path) -> None:
    gen = _run("--generate", str(tmp_path), "--count", "600", "--tips", "8")
    assert gen.returncode == 0, gen.stderr
    header = (tmp_path / "ROUNDS.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["action", "reward", "propensity"]
    assert all(h.startswith("x_") for h in header[3:])

    plot = tmp_path / "replay.png"
    rounds, actions = str(tmp_path / "ROUNDS.csv"), str(tmp_path / "ACTIONS.csv")
    out = _run("--rounds", rounds, "--actions", actions, "--tune-budget", "0", "--plot", str(plot))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert list(result["evaluations"]) == ["ROUNDS.csv"]
    evaluation = result["evaluations"]["ROUNDS.csv"]
    assert evaluation["rounds"] == 600 and evaluation["actions"] == 8
    assert set(evaluation["policies"]) == {"ours", "uniform", "vw_cb_explore_adf", "vw_squarecb"}
    for numbers in evaluation["policies"].values():
        assert 0 < numbers["rounds_matched"] <= 600
        assert 0.0 <= numbers["estimated_reward_per_round"] <= 1.0
        assert 0.0 < numbers["standard_error"] < 0.2
    assert "ours_minus_vw_tuned" not in result  # nothing was tuned
    assert plot.stat().st_size > 0

    # Without ACTIONS.csv every action gets its own model (disjoint rows).
    bare = _run("--rounds", rounds, "--no-vw", "--tune-budget", "0", "--plot", str(plot))
    assert bare.returncode == 0, bare.stderr
    assert json.loads(bare.stdout)["evaluations"]["ROUNDS.csv"]["actions"] == 8


def test_repeated_runs_give_the_mean_and_its_spread(tmp_path: Path) -> None:
    """Each policy runs once per policy seed; its estimate is the runs' mean and its
    standard error their spread / sqrt(runs)."""
    paths = replay.generate(tmp_path, 900, 8, seed=3)
    logs = replay.load(*paths)
    layout = replay.layout_of(logs)
    seeds = [1, 1001, 2001]
    made: list[int] = []

    def agents() -> list[Agent]:
        made.append(1)
        return [make_agent("ours", {"alpha": 0.3}, "ours", layout), UniformAgent()]

    result = replay.replay_runs(logs, agents, seeds, "test")
    assert len(made) == 3 and result["runs"] == 3 and result["policy_seeds"] == seeds
    for name, numbers in result["policies"].items():
        runs = numbers["runs"]
        one = [replay.replay(logs, agents(), s)["_scores"][name] for s in seeds]
        assert runs == pytest.approx(one, abs=1e-4)
        assert len(set(runs)) > 1  # the policy seed matters
        assert numbers["estimated_reward_per_round"] == pytest.approx(np.mean(runs), abs=1e-4)
        spread = float(np.std(runs, ddof=1) / np.sqrt(3))
        assert numbers["standard_error"] == pytest.approx(spread, abs=1e-4)

    bad = _run("--count", "300", "--repeats", "0", "--no-vw")
    assert bad.returncode == 2 and "--repeats" in bad.stderr


def test_replay_tunes_both_sides_on_rounds_it_does_not_evaluate(tmp_path: Path) -> None:
    assert _run("--generate", str(tmp_path), "--count", "600", "--tips", "8").returncode == 0
    out = _run(
        "--rounds",
        str(tmp_path / "ROUNDS.csv"),
        "--actions",
        str(tmp_path / "ACTIONS.csv"),
        "--tune-budget",
        "3",
        "--tune-passes",
        "2",
        "--repeats",
        "2",
        "--tune-repeats",
        "2",
        "--plot",
        str(tmp_path / "replay.png"),
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["tuning"]["runs_per_log"] == 2
    # The first 30% tune, the other 70% are evaluated.
    assert result["tuning"]["rounds"] == [180]
    [(name, evaluation)] = result["evaluations"].items()
    assert evaluation["rounds"] == 420 and "after the first 30%" in name
    for side in ("ours", "vw"):
        assert len(result["tuning"][side]["tried"]) == 3
        best = result["tuning"][side]["best_score"]
        assert best == max(t["score"] for t in result["tuning"][side]["tried"])
    assert {"ours_tuned", "vw_tuned"} <= set(evaluation["policies"])
    assert result["vw_tuned_config"].startswith("--cb_explore_adf ")
    margin = result["ours_minus_vw_tuned"][name]["ours_tuned"]
    policies = evaluation["policies"]
    expected = (
        policies["ours_tuned"]["estimated_reward_per_round"]
        - policies["vw_tuned"]["estimated_reward_per_round"]
    )
    assert abs(margin["difference"] - expected) < 1e-3 and margin["standard_error"] > 0


def test_replay_on_simulated_logs_tunes_on_other_seeds(tmp_path: Path) -> None:
    common = ["--count", "300", "--tips", "8", "--logs-dir", str(tmp_path / "logs")]
    out = _run(
        *common,
        "--seeds",
        "1",
        "--tune-seeds",
        "100",
        "--tune-budget",
        "2",
        "--tune-passes",
        "1",
        "--plot",
        str(tmp_path / "replay.png"),
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert list(result["evaluations"]) == ["seed 1"]
    assert (tmp_path / "logs" / "seed-100" / "ROUNDS.csv").exists()
    assert set(result["ours_minus_vw_tuned"]["seed 1"]) == {"ours", "ours_tuned"}

    overlap = _run(*common, "--seeds", "1", "--tune-seeds", "1", "--no-vw")
    assert overlap.returncode == 2 and "must not overlap" in overlap.stderr


def test_tuning_logs_must_have_the_evaluations_actions(tmp_path: Path) -> None:
    assert _run("--generate", str(tmp_path / "a"), "--count", "300", "--tips", "8").returncode == 0
    assert _run("--generate", str(tmp_path / "b"), "--count", "300", "--tips", "16").returncode == 0
    out = _run(
        "--rounds",
        str(tmp_path / "a" / "ROUNDS.csv"),
        "--actions",
        str(tmp_path / "a" / "ACTIONS.csv"),
        "--tune-rounds",
        str(tmp_path / "b" / "ROUNDS.csv"),
        "--no-vw",
    )
    assert out.returncode == 2
    assert "not in" in out.stderr or "different actions" in out.stderr


def test_vw_reads_the_replay_context_from_its_shared_line() -> None:
    x = np.array([0.5, -1.0])
    action_features = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    rows = replay.candidate_rows(x, np.arange(3), action_features)
    layout = replay.layout_of(
        {"x": x[None, :], "ids": np.arange(3), "action_features": action_features}
    )
    assert layout == Layout(dim=rows.shape[1], context=(0, 1, 2))
    agent = VwAgent("--squarecb", context_columns=layout.context, with_arm_id=True)
    try:
        lines = agent._example(["a", "b", "c"], rows)
        assert lines[0] == "shared |s f0:1 f1:0.5 f2:-1"
        # The action lines keep the rest: a, then x (x) a (x-major: 0.5 * 2, -1 * 2).
        assert lines[2] == "|a f4:2 f6:1 f8:-2 |i b"
        agent.act(["a", "b", "c"], rows, np.random.default_rng(0))
        agent.learn(1, 1.0)
        skewed = rows.copy()
        skewed[1, 1] = 0.0
        with pytest.raises(ValueError, match="context_columns"):
            agent._example(["a", "b", "c"], skewed)
    finally:
        agent.close()


def test_the_tuning_share_is_the_first_rounds_in_logged_order() -> None:
    n = 10
    logs: replay.Logs = {
        "ids": np.arange(2),
        "actions": np.arange(n) % 2,
        "reward": np.arange(n, dtype=float),
        "propensity": np.full(n, 0.5),
        "x": np.arange(n, dtype=float)[:, None],
        "action_features": None,
    }
    head, tail = replay.split(logs, 0.3)
    assert np.asarray(head["reward"]).tolist() == [0.0, 1.0, 2.0]
    assert np.asarray(tail["reward"]).tolist() == [float(i) for i in range(3, 10)]
    with pytest.raises(replay.FormatError, match="tune-share"):
        replay.split(logs, 0.01)


def test_replay_names_the_bad_column(tmp_path: Path) -> None:
    rounds = tmp_path / "ROUNDS.csv"
    rounds.write_text("action,reward,x_a\n1,0,0.5\n")
    out = _run("--rounds", str(rounds), "--no-vw")
    assert out.returncode == 2
    assert "missing column 'propensity'" in out.stderr

    rounds.write_text("action,reward,propensity,x_a\n1,0,0,0.5\n")
    out = _run("--rounds", str(rounds), "--no-vw")
    assert out.returncode == 2 and "ROUNDS.csv:2: propensity" in out.stderr

"""`tips bench replay` runs on logs the simulator generates, and rejects bad logs
with a message naming the file and column."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    out = _run(
        "--rounds",
        str(tmp_path / "ROUNDS.csv"),
        "--actions",
        str(tmp_path / "ACTIONS.csv"),
        "--plot",
        str(plot),
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["rounds"] == 600 and result["actions"] == 8
    assert set(result["policies"]) == {"ours", "uniform", "vw_cb_explore_adf", "vw_squarecb"}
    for numbers in result["policies"].values():
        assert 0 < numbers["rounds_matched"] <= 600
        assert 0.0 <= numbers["estimated_reward_per_round"] <= 1.0
    assert plot.stat().st_size > 0

    # Without ACTIONS.csv every action gets its own model (disjoint rows).
    bare = _run("--rounds", str(tmp_path / "ROUNDS.csv"), "--no-vw", "--plot", str(plot))
    assert bare.returncode == 0, bare.stderr
    assert json.loads(bare.stdout)["actions"] == 8


def test_replay_names_the_bad_column(tmp_path: Path) -> None:
    rounds = tmp_path / "ROUNDS.csv"
    rounds.write_text("action,reward,x_a\n1,0,0.5\n")
    out = _run("--rounds", str(rounds), "--no-vw")
    assert out.returncode == 2
    assert "missing column 'propensity'" in out.stderr

    rounds.write_text("action,reward,propensity,x_a\n1,0,0,0.5\n")
    out = _run("--rounds", str(rounds), "--no-vw")
    assert out.returncode == 2 and "ROUNDS.csv:2: propensity" in out.stderr

"""The learning bench's tuning: the search keeps to its budget, tries each
configuration once, starts from the defaults and returns the best it tried; the
VW option strings it builds are ones VW accepts, on the rows the bench feeds."""

from __future__ import annotations

import numpy as np
import pytest

from bench.learning import run, runs, tune
from policy.bandit import PolicyParams
from sim.agents import UniformAgent, VwAgent
from sim.tuning import OURS_SPACE, VW_SPACE, Config, Space, make_agent, search, vw_setup
from sim.world import World

pytest.importorskip("vowpalwabbit")


def test_search_keeps_the_budget_and_returns_the_best_it_tried() -> None:
    space = Space(
        dims={"x": (0, 1, 2, 3, 4, 5), "y": ("a", "b", "c")},
        default={"x": 0, "y": "a"},
        unordered=frozenset({"y"}),
    )
    calls: list[int] = []

    def evaluate(batch: list[tuple[str, Config]]) -> list[float]:
        calls.append(len(batch))
        return [-abs(c["x"] - 4) + (0.5 if c["y"] == "c" else 0.0) for _, c in batch]

    result = search({"toy": space}, budget=7, passes=3, evaluate=evaluate, seed=[0])
    toy = result["toy"]
    assert calls == [2, 2, 3]
    assert toy.trials[0].config == {"x": 0, "y": "a"}  # the defaults come first
    assert len({space.key(t.config) for t in toy.trials}) == 7
    assert toy.best.score == max(t.score for t in toy.trials)
    # A side's search does not depend on the other sides searched beside it.
    other = Space(dims={"x": (7, 8, 9), "y": ("a",)}, default={"x": 8, "y": "a"})
    both = search({"other": other, "toy": space}, budget=7, passes=3, evaluate=evaluate, seed=[0])
    assert [t.config for t in both["toy"].trials] == [t.config for t in toy.trials]
    assert len(both["other"].trials) == 3  # all there is


def test_the_first_pass_tries_the_default_then_the_known_starts() -> None:
    space = Space(
        dims={"x": (0, 1, 2, 3, 4, 5), "y": ("a", "b", "c")},
        default={"x": 0, "y": "a"},
        unordered=frozenset({"y"}),
        # The last is outside the space (no y "z"): skipped, not tried.
        starts=({"x": 4, "y": "c"}, {"x": 2}, {"x": 3, "y": "z"}),
    )
    tried: list[Config] = []

    def evaluate(batch: list[tuple[str, Config]]) -> list[float]:
        tried.extend(c for _, c in batch)
        return [-abs(c["x"] - 4) + (0.5 if c["y"] == "c" else 0.0) for _, c in batch]

    result = search({"toy": space}, budget=5, passes=1, evaluate=evaluate, seed=[0])
    assert tried[:3] == [{"x": 0, "y": "a"}, {"x": 4, "y": "c"}, {"x": 2, "y": "a"}]
    assert all(c["y"] != "z" for c in tried) and len(tried) == 5
    assert result["toy"].best.config == {"x": 4, "y": "c"}
    # Both real spaces hold their starts (a typo would silently drop one).
    for real in (OURS_SPACE, VW_SPACE):
        assert real.starts and all(real.holds(c) for c in real.starts)


def test_tuning_on_a_tiny_world_returns_the_best_of_what_it_ran() -> None:
    worlds = [World(users=2, days=2, decisions_per_day=3, seed=s) for s in (100, 101)]
    lines: list[str] = []
    first = tune(worlds, budget=4, passes=2, with_vw=True, repeats=1, log=lines.append)
    again = tune(worlds, budget=4, passes=2, with_vw=True, repeats=1, log=lambda _: None)
    for side in ("ours", "vw"):
        trials = first[side].trials
        assert len(trials) == 4
        assert trials[0].config == first[side].space.normal({})  # the defaults
        assert first[side].best.score == max(t.score for t in trials)
        # Seeded: the same configurations and scores on a second run.
        assert [(t.config, t.score) for t in again[side].trials] == [
            (t.config, t.score) for t in trials
        ]
    assert PolicyParams(**first["ours"].best.config)
    assert any("tune pass 2/2" in line and "best" in line for line in lines)


def test_repeated_runs_report_their_mean_and_spread() -> None:
    world = World(users=3, days=3, decisions_per_day=4, seed=100)
    seeds = [1, 1001, 2001]
    result = runs(world, lambda: [make_agent("ours", {}, "ours"), UniformAgent()], seeds, "t")
    assert result["runs"] == 3 and result["policy_seeds"] == seeds
    ours = result["policies"]["ours"]
    one = [run(world, [make_agent("ours", {}, "ours")], s)["_scores"]["ours"] for s in seeds]
    assert ours["expected_reward_runs"] == pytest.approx(one, abs=1e-4)
    assert len(set(ours["expected_reward_runs"])) > 1  # the policy seed matters
    assert ours["average_expected_reward"] == pytest.approx(np.mean(one), abs=1e-4)
    se = float(np.std(one, ddof=1) / np.sqrt(3))
    assert ours["expected_reward_standard_error"] == pytest.approx(se, abs=1e-4)
    # The world's draws do not depend on the policy seed: the best single tip is the same.
    assert result["policies"]["best_single_tip"]["expected_reward_standard_error"] == 0.0


@pytest.mark.parametrize("explore", VW_SPACE.dims["explore"])
def test_vw_accepts_the_options_the_search_builds(explore: str) -> None:
    world = World(users=1, days=1, decisions_per_day=2, seed=3)
    rounds = list(world.rounds())
    rng = np.random.default_rng(0)
    configs = [{**VW_SPACE.default, "explore": explore, "q": q} for q in VW_SPACE.dims["q"]]
    configs += [
        VW_SPACE.sample(np.random.default_rng(i), 0) | {"explore": explore} for i in range(4)
    ]
    for i, config in enumerate(configs):
        config = VW_SPACE.normal(config)
        options, tip_id = vw_setup(config)
        assert options.startswith(f"--{explore}" if explore != "regcb" else "--regcb")
        agent = make_agent("vw", config, f"vw#{i}")
        assert isinstance(agent, VwAgent)
        try:
            for rnd in rounds:
                index, propensity = agent.act(world.arms, rnd.rows, rng)
                assert 0 <= index < len(world.arms) and 0.0 < propensity <= 1.0
                agent.learn(index, 1.0)
        finally:
            agent.close()
        if "-q si" in options:
            assert tip_id  # crossing with the tip id needs it as a feature


def test_spaces_contain_their_defaults() -> None:
    for space in (OURS_SPACE, VW_SPACE):
        for d, value in space.default.items():
            assert value in space.dims[d], d
    assert OURS_SPACE.normal({}) == PolicyParams().__dict__
    assert vw_setup({})[0] == "--epsilon 0.05 -l 0.5 --power_t 0.5"  # VW's defaults

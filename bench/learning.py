"""Learning on the user simulator: our policy against the baselines, one run.

Every policy sees the same simulated rounds (users, days, contexts, and the
same uniform draw deciding each reaction) and the same feature rows
(policy.features): ours (ridge UCB + per-tip residuals,
softmax propensities), uniform random, Vowpal Wabbit ``--cb_explore_adf``
(its default epsilon-greedy, and ``--squarecb``; plus one given the tip id as
a feature), and the best single tip in hindsight (the one tip with the highest
expected reward over all rounds, shown every round). Regret is against the
simulator's oracle (the tip with the highest expected reward each round).

Prints JSON (cumulative and average reward, expected reward, regret, time per
round); writes bench/out/learning.png (learning curves); progress on stderr.

    tips bench learning [--users 40] [--days 28] [--decisions 6] [--seed 1] [--no-vw]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `sim` is a top-level package of the repository

from policy.bandit import REWARD_DONE, REWARD_SNOOZE  # noqa: E402
from policy.features import DIM, ROW_NAMES  # noqa: E402
from sim.agents import Agent, OurAgent, UniformAgent, VwAgent  # noqa: E402
from sim.reactions import DONE, SNOOZE, draw  # noqa: E402
from sim.world import Affinity, World  # noqa: E402

OUT = ROOT / "bench" / "out"
AFFINITY = ROW_NAMES.index("category_affinity")
REWARD = {DONE: REWARD_DONE, SNOOZE: REWARD_SNOOZE}


def _agents(with_vw: bool) -> list[Agent]:
    agents: list[Agent] = [OurAgent(DIM), UniformAgent()]
    if with_vw:
        agents += [
            VwAgent(name="vw_cb_explore_adf"),
            VwAgent("--squarecb", name="vw_squarecb"),
            VwAgent("--squarecb", name="vw_squarecb_arm_id", with_arm_id=True),
        ]
    return agents


def run(world: World, agents: list[Agent], seed: int) -> dict[str, object]:
    arms = world.arms
    categories = [t.features.category for t in world.catalog]
    rngs = {a.name: np.random.default_rng(seed) for a in agents}
    affinity = {a.name: Affinity() for a in agents}
    n = world.n_rounds
    realized = {a.name: np.zeros(n) for a in agents}
    expected = {a.name: np.zeros(n) for a in agents}
    seconds = dict.fromkeys(rngs, 0.0)
    oracle = np.zeros(n)
    all_expected = np.zeros((n, len(arms)))
    draws = np.zeros(n)
    probs_log: list[list[dict[str, float]]] = []
    start = time.perf_counter()
    for rnd in world.rounds():
        t = rnd.t
        oracle[t] = rnd.expected.max()
        all_expected[t] = rnd.expected
        draws[t] = rnd.u
        probs_log.append(rnd.probabilities)
        for agent in agents:
            aff = affinity[agent.name]
            rows = rnd.rows.copy()
            rates = aff.context(rnd.user.user_id)
            rows[:, AFFINITY] = [(rates[f"affinity_{c}"] - 0.5) * 2.0 for c in categories]
            tick = time.perf_counter()
            index, _ = agent.act(arms, rows, rngs[agent.name])
            reaction = draw(rnd.probabilities[index], rnd.u)
            reward = REWARD.get(reaction, 0.0)
            agent.learn(index, reward)
            seconds[agent.name] += time.perf_counter() - tick
            aff.record(rnd.user.user_id, categories[index], reaction == DONE)
            realized[agent.name][t] = reward
            expected[agent.name][t] = rnd.expected[index]
        if (t + 1) % 1000 == 0:
            print(
                f"learning: {t + 1}/{n} rounds, {time.perf_counter() - start:.0f} s",
                file=sys.stderr,
            )
    # The best single tip in hindsight, on the same draws.
    best = int(all_expected.sum(axis=0).argmax())
    realized["best_single_tip"] = np.array(
        [REWARD.get(draw(probs_log[t][best], draws[t]), 0.0) for t in range(n)]
    )
    expected["best_single_tip"] = all_expected[:, best]
    policies = {}
    for name in realized:
        policies[name] = {
            "cumulative_reward": round(float(realized[name].sum()), 2),
            "average_reward": round(float(realized[name].mean()), 4),
            "average_expected_reward": round(float(expected[name].mean()), 4),
            "last_quarter_expected_reward": round(float(expected[name][3 * n // 4 :].mean()), 4),
            "regret_vs_oracle": round(float((oracle - expected[name]).sum()), 2),
            "us_per_round": round(seconds.get(name, 0.0) / n * 1e6, 1) if name in seconds else None,
        }
    return {
        "rounds": n,
        "users": len(world.users),
        "tips": len(arms),
        "dim": DIM,
        "best_single_tip": arms[best],
        "oracle_average_expected_reward": round(float(oracle.mean()), 4),
        "policies": policies,
        "_curves": {name: (oracle - expected[name]).cumsum() for name in expected},
        "_expected": expected,
    }


def plot(result: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    curves = result["_curves"]
    expected = result["_expected"]
    assert isinstance(curves, dict) and isinstance(expected, dict)
    window = 500
    for name, curve in curves.items():
        left.plot(curve, label=name)
        smooth = np.convolve(expected[name], np.ones(window) / window, mode="valid")
        right.plot(np.arange(window - 1, window - 1 + len(smooth)), smooth, label=name)
    left.set(title="Cumulative regret vs the oracle", xlabel="round", ylabel="regret")
    right.set(title=f"Expected reward ({window}-round moving average)", xlabel="round")
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tips bench learning", description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--decisions", type=int, default=6, help="decisions per user per day")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-vw", action="store_true", help="skip Vowpal Wabbit")
    parser.add_argument("--plot", type=Path, default=OUT / "learning.png")
    args = parser.parse_args(argv)
    world = World(args.users, args.days, args.decisions, args.seed)
    result = run(world, _agents(not args.no_vw), args.seed)
    plot(result, args.plot)
    public = {k: v for k, v in result.items() if not k.startswith("_")}
    public["plot"] = str(args.plot)
    print(json.dumps(public, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

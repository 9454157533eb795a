"""Learning with recommender replicas: does a mesh of two learn as well as one?

    tips bench replicas [--users 40] [--days 28] [--seeds 1 2] [--lag 0 50]

On the learning bench's simulator (same worlds, draws and feature rows as
``tips bench learning``), decisions alternate between the replicas, as the
gateway sends them (``TIPS_RECOMMENDER_ADDR=a,b``). Each replica runs our
policy as it serves (``policy.serving``: the shared part from its own ONNX
export, refreshed every 200 rewards):

- ``one``: a single recommender, the baseline;
- ``two, shared, lag L``: the deciding replica folds its reward at once, the
  other ``L`` rounds later (``RewardAssigned`` reaching it: decision 32);
- ``two, isolated``: each replica learns only from its own rewards (before
  decision 32).

Prints JSON (average expected reward per seed and policy, and each one's
ratio to ``one``) and writes bench/out/replicas.png (the learning curves).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from learning import OUT, run

from sim.agents import OurAgent
from sim.world import World


class Replicas:
    """Replicas of our policy taking the decisions in turn; each reward reaches the
    others ``lag`` rounds after the decider (never, with ``share`` False)."""

    def __init__(
        self, dim: int, name: str, count: int = 2, lag: int = 0, share: bool = True
    ) -> None:
        self.name = name
        self.replicas = [OurAgent(dim, name=f"{name}#{i}") for i in range(count)]
        self.lag = lag
        self.share = share
        self._round = 0
        self._deciding = 0
        self._last: tuple[Sequence[str], np.ndarray] | None = None
        # (round due, the replica that decided, arm, row, reward)
        self._feed: deque[tuple[int, int, str, np.ndarray, float]] = deque()

    def act(
        self, arms: Sequence[str], rows: np.ndarray, rng: np.random.Generator
    ) -> tuple[int, float]:
        self._round += 1
        self._deliver()
        self._deciding = self._round % len(self.replicas)
        self._last = (arms, rows)
        return self.replicas[self._deciding].act(arms, rows, rng)

    def learn(self, index: int, reward: float) -> None:
        assert self._last is not None
        arms, rows = self._last
        self.replicas[self._deciding].learn(index, reward)
        if self.share:
            due = self._round + self.lag
            self._feed.append((due, self._deciding, arms[index], rows[index], reward))
            self._deliver()

    def _deliver(self) -> None:
        while self._feed and self._feed[0][0] <= self._round:
            _, by, arm, row, reward = self._feed.popleft()
            for i, replica in enumerate(self.replicas):
                if i != by:
                    replica.served.update(arm, row, reward)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--lag", type=int, nargs="+", default=[0, 50], help="feed lag, rounds")
    parser.add_argument("--plot", type=Path, default=OUT / "replicas.png")
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    curves: dict[str, dict[str, list[float]]] = {}
    for seed in args.seeds:
        world = World(users=args.users, days=args.days, seed=seed)
        dim = next(world.rounds()).rows.shape[1]
        agents = [OurAgent(dim, name="one")]
        agents += [Replicas(dim, f"two_shared_lag{lag}", lag=lag) for lag in args.lag]
        agents += [Replicas(dim, "two_isolated", share=False)]
        out = run(world, agents, seed, label=f"replicas seed {seed}")  # type: ignore[arg-type]
        policies = out["policies"]
        assert isinstance(policies, dict)
        results[str(seed)] = {
            name: policies[name]["average_expected_reward"] for name in [a.name for a in agents]
        }
        expected = out["_expected"]
        assert isinstance(expected, dict)
        window = 500
        curves[str(seed)] = {
            name: np.convolve(expected[name], np.ones(window) / window, "valid").tolist()
            for name in results[str(seed)]
        }
    summary = {
        "bench": "replicas",
        "rounds_per_seed": World(users=args.users, days=args.days).n_rounds,
        "average_expected_reward": results,
        "ratio_to_one": {
            seed: {name: round(v / by_name["one"], 4) for name, v in by_name.items()}
            for seed, by_name in results.items()
        },
    }
    try:
        _plot(curves, args.plot)
        summary["plot"] = str(args.plot)
    except ImportError:
        summary["plot"] = "matplotlib not installed"
    print(json.dumps(summary, indent=2))


def _plot(curves: dict[str, dict[str, list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
    for ax, (seed, by_name) in zip(axes[0], curves.items(), strict=True):
        for name, curve in by_name.items():
            # "one" on top, dashed: "two, shared, lag 0" folds the same rewards in the
            # same order, so its curve is the same and would hide it.
            style = {"color": "k", "linestyle": "--", "zorder": 3} if name == "one" else {}
            ax.plot(curve, label=name, **style)
        ax.set_title(f"seed {seed}: expected reward (moving average)")
        ax.set_xlabel("round")
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


if __name__ == "__main__":
    sys.exit(main())

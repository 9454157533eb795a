"""Learning on the user simulator: our policy against tuned and untuned baselines.

Every policy sees the same simulated rounds (users, days, contexts, and the
same uniform draw deciding each reaction) and the same feature rows
(policy.features): ours (ridge UCB + per-tip residuals, softmax
propensities), uniform random, Vowpal Wabbit ``--cb_explore_adf`` (its default
epsilon-greedy, and ``--squarecb``; plus one given the tip id as a feature),
and the best single tip in hindsight (the one tip with the highest expected
reward over all rounds, shown every round). Regret is against the simulator's
oracle (the tip with the highest expected reward each round).

Tuning, before the evaluation: ours (``PolicyParams``: alpha, temperature,
epsilon, arm_prior, ridge, arm_alpha, arm_optimism) and VW (exploration
algorithm and its knobs: epsilon, squarecb's gamma_scale, regcb/regcbopt's
mellowness, cover's n and psi; learning rate, power_t, the tip id as a
feature, ``-q`` crosses of the shared context with the row and with the tip
id) are tuned the same way on the same budget:

* Budget: ``--tune-budget N`` configurations per side (default 24 for ours,
  24 for VW; ours' space holds 74,400 distinct configurations, VW's 3,654),
  each run ``--tune-repeats`` times (default twice) over every tuning world: the
  evaluation's size (users, days, decisions) on other seeds (``--tune-seeds``,
  default 100 101: other users, other days), so nothing is selected on the
  evaluation seeds. Score: the average expected reward per round over a run
  (learning speed and asymptote both count; the expected reward avoids the
  draws' noise), averaged over the tuning worlds and runs (two worlds, because
  one lets a lucky greedy configuration win).
* Search (the same code for both sides): ``--tune-passes`` passes (default 3),
  each a third of the budget run in lockstep; the first pass is the side's
  defaults (ours: ``PolicyParams()``; VW: its own, epsilon-greedy 0.05, -l 0.5),
  then its ``starts`` (the best configurations of both benches' runs before
  decision 44, for each side), then random configurations; later passes half
  neighbours of the best so far (one knob moved one step), half random. VW's
  random draws cycle over its exploration families, so each family gets its
  share.
* The best configuration of each side is then evaluated on the evaluation
  seeds (``--seeds``, default 1 2) next to the defaults. ``--tune-budget 0``
  skips tuning (a quick run).

Prints JSON (per evaluation seed and policy: cumulative and average reward,
expected reward, regret, time per round; the best configurations; the tuning
budget, search space and every configuration tried with its score; seconds
taken); writes bench/out/learning.png (learning curves, one row per
evaluation seed); progress on stderr (each configuration's score, then per
pass the configurations tried and the best so far).

Evaluation: every policy runs ``--repeats`` times (default 10) on each
evaluation seed's world, each run with its own policy seed (the world and the
reactions' draws stay the same); every number is the mean over the runs, and
the average expected reward comes with its standard error from their spread.

    tips bench learning [--users 40] [--days 28] [--decisions 6] [--seeds 1 2]
        [--tune-budget 24] [--tune-passes 3] [--tune-seeds 100 101] [--repeats 10]
        [--tune-repeats 2] [--no-vw]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `sim` is a top-level package of the repository

from policy.bandit import REWARD_DONE, REWARD_SNOOZE  # noqa: E402
from policy.features import DIM, ROW_NAMES  # noqa: E402
from sim.agents import Agent, OurAgent, UniformAgent, VwAgent  # noqa: E402
from sim.reactions import DONE, SNOOZE, draw  # noqa: E402
from sim.tuning import (  # noqa: E402
    OURS_SPACE,
    TUNE_SEEDS,
    VW_SPACE,
    Config,
    Estimate,
    Search,
    add_tuning_arguments,
    make_agent,
    policy_seeds,
    repeated,
    report,
    search,
    vw_describe,
)
from sim.world import Affinity, World  # noqa: E402

OUT = ROOT / "bench" / "out"
AFFINITY = ROW_NAMES.index("category_affinity")
REWARD = {DONE: REWARD_DONE, SNOOZE: REWARD_SNOOZE}

BUDGET_MEANING = (
    "configurations per side (ours, VW), each run --tune-repeats times over every tuning"
    " world (the evaluation's size, each tuning seed); the same search for both sides"
)
OBJECTIVE = (
    "average expected reward per round over the tuning run (mean over tuning seeds and runs)"
)


# --- one run of agents on a world -----------------------------------------------------


def run(world: World, agents: list[Agent], seed: int, label: str = "") -> dict[str, object]:
    arms = world.arms
    categories = [t.features.category for t in world.catalog]
    rngs = {a.name: np.random.default_rng(seed) for a in agents}
    if len(rngs) != len(agents):
        raise ValueError("agents: names must be distinct")
    affinity = {a.name: Affinity() for a in agents}
    n = world.n_rounds
    realized = {a.name: np.zeros(n) for a in agents}
    expected = {a.name: np.zeros(n) for a in agents}
    seconds = dict.fromkeys(rngs, 0.0)
    oracle = np.zeros(n)
    all_expected = np.zeros((n, len(arms)))
    all_done = np.zeros((n, len(arms)))
    all_snooze = np.zeros((n, len(arms)))
    draws = np.zeros(n)
    start = time.perf_counter()
    for rnd in world.rounds():
        t = rnd.t
        oracle[t] = rnd.expected.max()
        all_expected[t] = rnd.expected
        all_done[t] = [p[DONE] for p in rnd.probabilities]
        all_snooze[t] = [p[SNOOZE] for p in rnd.probabilities]
        draws[t] = rnd.u
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
                f"{label or 'learning'}: {t + 1}/{n} rounds, {time.perf_counter() - start:.0f} s",
                file=sys.stderr,
            )
    # The best single tip in hindsight, on the same draws.
    best = int(all_expected.sum(axis=0).argmax())
    realized["best_single_tip"] = np.array(
        [
            REWARD.get(draw({DONE: all_done[t, best], SNOOZE: all_snooze[t, best]}, draws[t]), 0.0)
            for t in range(n)
        ]
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
        "seconds": round(time.perf_counter() - start, 1),
        "policies": policies,
        "_curves": {name: (oracle - expected[name]).cumsum() for name in expected},
        "_expected": expected,
        "_scores": {name: float(expected[name].mean()) for name in expected},
    }


def runs(
    world: World, make_agents: Callable[[], list[Agent]], seeds: Sequence[int], label: str
) -> dict[str, object]:
    """``run`` once per policy seed, fresh agents each time, combined: every number
    is the mean over the runs (curves too); ``average_expected_reward`` also comes
    with each run's value and its standard error from their spread."""
    done = repeated(
        lambda agents, seed, tag: run(world, agents, seed, label=tag), make_agents, seeds, label
    )
    first = done[0]
    policies: dict[str, dict[str, object]] = {}
    for name, numbers in first["policies"].items():  # type: ignore[attr-defined]
        per = [r["policies"][name] for r in done]  # type: ignore[index]
        mean = {
            k: None if v is None else float(np.mean([p[k] for p in per]))
            for k, v in numbers.items()
        }
        estimate = Estimate(tuple(p["average_expected_reward"] for p in per))
        policies[name] = {
            k: None if v is None else round(v, 1 if k == "us_per_round" else 4)
            for k, v in mean.items()
        }
        se = estimate.standard_error
        policies[name]["expected_reward_standard_error"] = None if se is None else round(se, 4)
        policies[name]["expected_reward_runs"] = [round(v, 4) for v in estimate.runs]
    curves = {n: np.mean([r["_curves"][n] for r in done], axis=0) for n in first["_curves"]}  # type: ignore[index,attr-defined]
    expected = {n: np.mean([r["_expected"][n] for r in done], axis=0) for n in first["_expected"]}  # type: ignore[index,attr-defined]
    return {
        **{k: v for k, v in first.items() if not k.startswith("_")},
        "runs": len(done),
        "policy_seeds": list(seeds),
        "seconds": round(sum(float(r["seconds"]) for r in done), 1),  # type: ignore[arg-type]
        "policies": policies,
        "_curves": curves,
        "_expected": expected,
        "_scores": {n: float(e.mean()) for n, e in expected.items()},
        "_estimates": {
            n: Estimate(tuple(r["_scores"][n] for r in done))  # type: ignore[index]
            for n in first["_scores"]  # type: ignore[attr-defined]
        },
    }


def tune(
    worlds: Sequence[World],
    budget: int,
    passes: int,
    with_vw: bool,
    repeats: int,
    log: Callable[[str], None],
) -> dict[str, Search]:
    """Searches ours (and VW): each pass runs its batch in lockstep on every tuning
    world, ``repeats`` times; a configuration's score is its mean over the worlds
    and runs."""
    count = [0]

    def evaluate(batch: list[tuple[str, Config]]) -> list[float]:
        count[0] += 1
        total = np.zeros(len(batch))
        for world in worlds:
            result = runs(
                world,
                lambda: [make_agent(side, c, f"{side}#{i}") for i, (side, c) in enumerate(batch)],
                policy_seeds(world.seed, repeats),
                f"tune pass {count[0]}, seed {world.seed}",
            )
            scores = result["_scores"]
            assert isinstance(scores, dict)
            total += [scores[f"{side}#{i}"] for i, (side, _) in enumerate(batch)]
        return [float(x) for x in total / len(worlds)]

    spaces = {"ours": OURS_SPACE, **({"vw": VW_SPACE} if with_vw else {})}
    return search(spaces, budget, passes, evaluate, [w.seed for w in worlds], log)


def _agents(with_vw: bool, tuned: Mapping[str, Config]) -> list[Agent]:
    agents: list[Agent] = [OurAgent(DIM), UniformAgent()]
    if "ours" in tuned:
        agents.insert(1, make_agent("ours", tuned["ours"], "ours_tuned"))
    if with_vw:
        agents += [
            VwAgent(name="vw_cb_explore_adf"),
            VwAgent("--squarecb", name="vw_squarecb"),
            VwAgent("--squarecb", name="vw_squarecb_arm_id", with_arm_id=True),
        ]
        if "vw" in tuned:
            agents.append(make_agent("vw", tuned["vw"], "vw_tuned"))
    return agents


def plot(results: Mapping[int, dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(12, 4.5 * len(results)), squeeze=False)
    for (seed, result), (left, right) in zip(results.items(), axes, strict=True):
        curves = result["_curves"]
        expected = result["_expected"]
        assert isinstance(curves, dict) and isinstance(expected, dict)
        n = len(next(iter(expected.values())))
        window = max(1, min(500, n // 10))
        for name, curve in curves.items():
            width = 2.2 if name.endswith("_tuned") else 1.2
            left.plot(curve, label=name, linewidth=width)
            smooth = np.convolve(expected[name], np.ones(window) / window, mode="valid")
            x = np.arange(window - 1, window - 1 + len(smooth))
            right.plot(x, smooth, label=name, linewidth=width)
        left.set(title=f"Cumulative regret vs the oracle (seed {seed})", xlabel="round")
        left.set(ylabel="regret")
        right.set(title=f"Expected reward ({window}-round moving average, seed {seed})")
        right.set(xlabel="round")
        right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tips bench learning", description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--decisions", type=int, default=6, help="decisions per user per day")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="evaluation seeds")
    parser.add_argument("--seed", type=int, help="one evaluation seed (same as --seeds N)")
    add_tuning_arguments(parser)
    parser.add_argument(
        "--tune-seeds",
        type=int,
        nargs="+",
        default=list(TUNE_SEEDS),
        help="seeds of the tuning worlds (a configuration's score: its mean over them)",
    )
    parser.add_argument("--no-vw", action="store_true", help="skip Vowpal Wabbit")
    parser.add_argument("--plot", type=Path, default=OUT / "learning.png")
    args = parser.parse_args(argv)
    seeds: list[int] = [args.seed] if args.seed is not None else list(dict.fromkeys(args.seeds))
    tune_seeds: list[int] = list(dict.fromkeys(args.tune_seeds))
    if args.tune_budget > 0 and set(tune_seeds) & set(seeds):
        parser.error(f"--tune-seeds {tune_seeds} and --seeds {seeds} must not overlap")
    with_vw = not args.no_vw
    began = time.perf_counter()

    tuning: dict[str, object] = {"budget": args.tune_budget}
    tuned: dict[str, Config] = {}
    if args.tune_budget > 0:
        worlds = [World(args.users, args.days, args.decisions, s) for s in tune_seeds]
        _log(
            f"tuning on seeds {tune_seeds} ({worlds[0].n_rounds} rounds each):"
            f" {args.tune_budget} configurations per side in {args.tune_passes} passes"
        )
        searches = tune(
            worlds, args.tune_budget, args.tune_passes, with_vw, args.tune_repeats, _log
        )
        tuning.update(
            budget_meaning=BUDGET_MEANING,
            objective=OBJECTIVE,
            seeds=tune_seeds,
            rounds=worlds[0].n_rounds,
            passes=args.tune_passes,
            runs_per_world=args.tune_repeats,
            seconds=round(time.perf_counter() - began, 1),
        )
        tuned = {side: s.best.config for side, s in searches.items()}
        tuning.update(report(searches))

    results: dict[int, dict[str, object]] = {}
    for seed in seeds:
        world = World(args.users, args.days, args.decisions, seed)
        _log(f"evaluating on seed {seed} ({world.n_rounds} rounds): {args.repeats} run(s)")
        results[seed] = runs(
            world,
            lambda: _agents(with_vw, tuned),
            policy_seeds(seed, args.repeats),
            f"seed {seed}",
        )
        line = ", ".join(
            f"{name} {p['average_expected_reward']}"  # type: ignore[index]
            for name, p in results[seed]["policies"].items()  # type: ignore[attr-defined]
        )
        _log(f"seed {seed}: average expected reward: {line}")
    plot(results, args.plot)

    first = results[seeds[0]]
    public: dict[str, object] = {
        k: first[k] for k in ("rounds", "users", "tips", "dim") if k in first
    }
    public.update(days=args.days, decisions_per_day=args.decisions, evaluation_seeds=seeds)
    if "ours" in tuned:
        public["ours_tuned_params"] = tuned["ours"]
    if "vw" in tuned:
        public["vw_tuned_config"] = vw_describe(tuned["vw"])
    public["tuning"] = tuning
    public["seeds"] = {
        str(seed): {k: v for k, v in r.items() if not k.startswith("_")}
        for seed, r in results.items()
    }
    names = list(first["policies"])  # type: ignore[call-overload]
    # Per policy and seed: average expected reward, average realized reward, regret.
    public["summary"] = {
        name: {
            str(seed): {
                "expected": r["policies"][name]["average_expected_reward"],  # type: ignore[index]
                "expected_se": r["policies"][name]["expected_reward_standard_error"],  # type: ignore[index]
                "realized": r["policies"][name]["average_reward"],  # type: ignore[index]
                "regret": r["policies"][name]["regret_vs_oracle"],  # type: ignore[index]
            }
            for seed, r in results.items()
        }
        for name in names
    }
    if "vw_tuned" in names:
        # Ours minus tuned VW, average expected reward per round: > 0 is ours ahead.
        # With its standard error over the runs (None for one run).
        public["ours_minus_vw_tuned"] = {
            str(seed): {
                name: r["_estimates"][name].minus(r["_estimates"]["vw_tuned"])  # type: ignore[index]
                for name in ("ours", "ours_tuned")
                if name in names
            }
            for seed, r in results.items()
        }
    public["seconds"] = {
        "tuning": tuning.get("seconds", 0.0),
        "evaluation": {str(seed): r["seconds"] for seed, r in results.items()},
        "total": round(time.perf_counter() - began, 1),
    }
    public["plot"] = str(args.plot)
    print(json.dumps(public, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
epsilon, arm_prior, ridge) and VW (exploration algorithm and its knobs:
epsilon, squarecb's gamma_scale, regcb/regcbopt's mellowness, cover's n and
psi; learning rate, power_t, the tip id as a feature, ``-q`` crosses of the
shared context with the row and with the tip id) are tuned the same way on
the same budget:

* Budget: ``--tune-budget N`` configurations per side (default 24 for ours,
  24 for VW; both spaces hold about 3,600 distinct configurations), each run
  once over every tuning world: the evaluation's size (users, days,
  decisions) on other seeds (``--tune-seeds``, default 100 101: other users,
  other days), so nothing is selected on the evaluation seeds. Score: the
  average expected reward per round over a run (learning speed and asymptote
  both count; the expected reward avoids the draws' noise), averaged over the
  tuning worlds (two, because one lets a lucky greedy configuration win).
* Search (the same code for both sides): ``--tune-passes`` passes (default 3),
  each a third of the budget run in lockstep; the first pass is the side's
  defaults (ours: ``PolicyParams()``; VW: its own, epsilon-greedy 0.05, -l 0.5)
  plus random configurations, later passes half neighbours of the best so far
  (one knob moved one step), half random. VW's random draws cycle over its
  exploration families, so each family gets its share.
* The best configuration of each side is then evaluated on the evaluation
  seeds (``--seeds``, default 1 2) next to the defaults. ``--tune-budget 0``
  skips tuning (a quick run).

Prints JSON (per evaluation seed and policy: cumulative and average reward,
expected reward, regret, time per round; the best configurations; the tuning
budget, search space and every configuration tried with its score; seconds
taken); writes bench/out/learning.png (learning curves, one row per
evaluation seed); progress on stderr (each configuration's score, then per
pass the configurations tried and the best so far).

    tips bench learning [--users 40] [--days 28] [--decisions 6] [--seeds 1 2]
        [--tune-budget 24] [--tune-passes 3] [--tune-seeds 100 101] [--no-vw]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `sim` is a top-level package of the repository

from policy.bandit import REWARD_DONE, REWARD_SNOOZE, PolicyParams  # noqa: E402
from policy.features import DIM, ROW_NAMES  # noqa: E402
from sim.agents import NS_ID, NS_ROW, NS_SHARED, Agent, OurAgent, UniformAgent, VwAgent  # noqa: E402
from sim.reactions import DONE, SNOOZE, draw  # noqa: E402
from sim.world import Affinity, World  # noqa: E402

OUT = ROOT / "bench" / "out"
AFFINITY = ROW_NAMES.index("category_affinity")
REWARD = {DONE: REWARD_DONE, SNOOZE: REWARD_SNOOZE}

TUNE_SEEDS = (100, 101)
TUNE_BUDGET = 24
TUNE_PASSES = 3
BUDGET_MEANING = (
    "configurations per side (ours, VW), each run once over every tuning world (the "
    "evaluation's size, each tuning seed); the same search for both sides"
)
OBJECTIVE = "average expected reward per round over the tuning run (mean over tuning seeds)"


# --- search spaces --------------------------------------------------------------------


Config = dict[str, Any]


@dataclass(frozen=True)
class Space:
    """Configurations as one choice per dimension. Ordered dimensions' neighbours
    are the adjacent values; an unordered dimension's are all its other values.
    ``canonical`` drops the knobs a configuration does not use, so two
    configurations that run the same are tried once."""

    dims: Mapping[str, tuple[Any, ...]]
    default: Mapping[str, Any]
    unordered: frozenset[str] = frozenset()
    stratify: str | None = None  # random draws cycle over this dimension's values
    canonical: Callable[[Config], Config] | None = None  # default: every dimension kept

    def normal(self, config: Config) -> Config:
        """``config`` with the defaults filled in, in the dimensions' order, canonical."""
        full = {d: config.get(d, self.default[d]) for d in self.dims}
        return self.canonical(full) if self.canonical is not None else full

    def key(self, config: Config) -> str:
        return json.dumps(self.normal(config), sort_keys=True)

    def sample(self, rng: np.random.Generator, i: int) -> Config:
        config = {d: values[int(rng.integers(len(values)))] for d, values in self.dims.items()}
        if self.stratify is not None:
            values = self.dims[self.stratify]
            config[self.stratify] = values[i % len(values)]
        return self.normal(config)

    def neighbours(self, config: Config) -> list[Config]:
        full = {**self.default, **config}
        out = []
        for d, values in self.dims.items():
            at = values.index(full[d])
            if d in self.unordered:
                moves = [v for v in values if v != full[d]]
            else:
                moves = [values[j] for j in (at - 1, at + 1) if 0 <= j < len(values)]
            out += [self.normal({**full, d: v}) for v in moves]
        return out

    def size(self) -> int:
        """Distinct configurations (after ``canonical``), by enumerating per value of
        ``stratify`` only the dimensions the configurations of that value use."""
        keys: set[str] = set()
        for value in self.dims[self.stratify] if self.stratify else (None,):
            base = dict(self.default)
            if self.stratify is not None:
                base[self.stratify] = value
            configs = [base]
            for d in self.normal(base):
                if d != self.stratify:
                    configs = [{**c, d: v} for c in configs for v in self.dims[d]]
            keys |= {self.key(c) for c in configs}
        return len(keys)


OURS_SPACE = Space(
    dims={
        "alpha": (0.03, 0.1, 0.2, 0.3, 0.5, 1.0),
        "temperature": (0.001, 0.003, 0.01, 0.03, 0.1),
        "epsilon": (0.005, 0.01, 0.02, 0.05),
        "arm_prior": (0.5, 1.0, 2.0, 5.0, 10.0, 20.0),
        "ridge": (0.1, 0.3, 1.0, 3.0, 10.0),
    },
    default=PolicyParams().__dict__,
)

_VW_KNOBS = {
    "epsilon": ("epsilon",),
    "squarecb": ("gamma_scale",),
    "regcb": ("regcb", "mellowness"),
    "cover": ("cover", "psi"),
}


def _vw_canonical(config: Config) -> Config:
    keep = {"explore", *_VW_KNOBS[config["explore"]], "l", "power_t", "tip_id", "q"}
    out = {k: v for k, v in config.items() if k in keep}
    if any(NS_ID in pair for pair in str(config["q"]).split()):
        out["tip_id"] = True  # crossing with the tip id needs it as a feature
    return out


VW_SPACE = Space(
    dims={
        "explore": ("epsilon", "squarecb", "regcb", "cover"),
        "epsilon": (0.005, 0.01, 0.02, 0.05, 0.1, 0.2),
        "gamma_scale": (1, 10, 100, 1000, 10000, 100000),
        "regcb": ("regcb", "regcbopt"),
        "mellowness": (0.001, 0.01, 0.1, 1.0),
        "cover": (2, 4, 8),
        "psi": (0.01, 0.1, 1.0),
        "l": (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0),
        "power_t": (0.0, 0.25, 0.5),
        "tip_id": (False, True),
        # -q pairs: s = the shared context, a = the row, i = the tip id (sim.agents).
        "q": ("", NS_SHARED + NS_ROW, NS_SHARED + NS_ID, f"{NS_SHARED}{NS_ROW} {NS_SHARED}{NS_ID}"),
    },
    # VW's own defaults: epsilon-greedy 0.05, -l 0.5, --power_t 0.5, no interactions.
    default={
        "explore": "epsilon",
        "epsilon": 0.05,
        "gamma_scale": 10,
        "regcb": "regcb",
        "mellowness": 0.1,
        "cover": 4,
        "psi": 1.0,
        "l": 0.5,
        "power_t": 0.5,
        "tip_id": False,
        "q": "",
    },
    unordered=frozenset({"explore", "regcb", "tip_id", "q"}),
    stratify="explore",
    canonical=_vw_canonical,
)


COST_RANGE = f"--cb_min_cost {-REWARD_DONE:g} --cb_max_cost 0"


def vw_setup(config: Config) -> tuple[str, bool]:
    """VW options (after ``--cb_explore_adf``) and whether the tip id is a feature."""
    c = {**VW_SPACE.default, **config}
    explore = {
        "epsilon": f"--epsilon {c['epsilon']:g}",
        "squarecb": f"--squarecb --gamma_scale {c['gamma_scale']:g}",
        # RegCB clips its cost estimates to [cb_min_cost, cb_max_cost] (default [0, 1]):
        # our costs are -reward, in [-1, 0]; without the range every estimate is 0.
        "regcb": f"--{c['regcb']} --mellowness {c['mellowness']:g} {COST_RANGE}",
        "cover": f"--cover {c['cover']} --psi {c['psi']:g}",
    }[c["explore"]]
    parts = [explore, f"-l {c['l']:g}", f"--power_t {c['power_t']:g}"]
    parts += [f"-q {pair}" for pair in str(c["q"]).split()]
    tip_id = bool(_vw_canonical(c)["tip_id"])
    return " ".join(parts), tip_id


def vw_describe(config: Config) -> str:
    """The configuration as one string: VW's command line and the features it sees."""
    options, tip_id = vw_setup(config)
    layout = f"shared |{NS_SHARED} context, |{NS_ROW} rest of the row"
    return f"--cb_explore_adf {options}  [{layout}{f', |{NS_ID} tip id' if tip_id else ''}]"


def make_agent(side: str, config: Config, name: str) -> Agent:
    if side == "ours":
        return OurAgent(DIM, PolicyParams(**config), name=name)
    options, tip_id = vw_setup(config)
    return VwAgent(options, name=name, with_arm_id=tip_id, shared_context=True)


def describe(side: str, config: Config) -> str:
    if side == "ours":
        return " ".join(f"{k}={v:g}" for k, v in config.items())
    return vw_describe(config)


# --- the search -----------------------------------------------------------------------


@dataclass
class Trial:
    config: Config
    score: float
    index: int  # order tried (0: the side's defaults)


@dataclass
class Search:
    """Budgeted search over one side's space; ``trials`` in the order tried."""

    space: Space
    trials: list[Trial] = field(default_factory=list)
    _keys: set[str] = field(default_factory=set)
    _draws: int = 0

    @property
    def best(self) -> Trial:
        # Ties go to the earlier trial (the defaults come first).
        return max(self.trials, key=lambda t: (t.score, -t.index))

    def propose(self, n: int, rng: np.random.Generator, first: bool) -> list[Config]:
        picks: list[Config] = []
        keys = set(self._keys)

        def take(config: Config) -> None:
            if len(picks) < n and self.space.key(config) not in keys:
                keys.add(self.space.key(config))
                picks.append(self.space.normal(config))

        if first:
            take(dict(self.space.default))
        else:
            near = [
                c
                for t in sorted(self.trials, key=lambda t: -t.score)
                for c in self._shuffled(self.space.neighbours(t.config), rng)
            ]
            for config in near:
                if len(picks) >= n // 2:
                    break
                take(config)
        for _ in range(200 * n):
            if len(picks) >= n:
                break
            take(self.space.sample(rng, self._draws))
            self._draws += 1
        return picks

    @staticmethod
    def _shuffled(configs: list[Config], rng: np.random.Generator) -> list[Config]:
        return [configs[i] for i in rng.permutation(len(configs))]

    def record(self, config: Config, score: float) -> Trial:
        trial = Trial(config, score, len(self.trials))
        self.trials.append(trial)
        self._keys.add(self.space.key(config))
        return trial


Evaluate = Callable[[list[tuple[str, Config]]], list[float]]


def search(
    spaces: Mapping[str, Space],
    budget: int,
    passes: int,
    evaluate: Evaluate,
    seed: Sequence[int],
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Search]:
    """Tries ``budget`` configurations per side in ``passes`` batches; each batch is
    one ``evaluate`` call (all its configurations on the same rounds). Each side
    draws from its own generator (``seed`` and its name), so a side's search does
    not depend on which other sides are searched."""
    searches = {side: Search(space) for side, space in spaces.items()}
    rngs = {side: np.random.default_rng([*seed, zlib.crc32(side.encode())]) for side in spaces}
    passes = max(1, min(passes, budget))
    for p in range(passes):
        size = budget * (p + 1) // passes - budget * p // passes
        batch = [
            (side, config)
            for side, s in searches.items()
            for config in s.propose(size, rngs[side], first=p == 0)
        ]
        if not batch:
            break
        start = time.perf_counter()
        scores = evaluate(batch)
        for (side, config), score in zip(batch, scores, strict=True):
            searches[side].record(config, score)
            log(f"  {side} {score:.4f}  {describe(side, config)}")
        status = "; ".join(
            f"{side} {len(s.trials)}/{budget} tried, best {s.best.score:.4f}"
            f" ({describe(side, s.best.config)})"
            for side, s in searches.items()
        )
        log(f"tune pass {p + 1}/{passes} ({time.perf_counter() - start:.0f} s): {status}")
    return searches


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


def _close(agents: Sequence[Agent]) -> None:
    for agent in agents:
        if isinstance(agent, VwAgent):
            agent.close()


def tune(
    worlds: Sequence[World], budget: int, passes: int, with_vw: bool, log: Callable[[str], None]
) -> dict[str, Search]:
    """Searches ours (and VW): each pass runs its batch in lockstep on every tuning
    world; a configuration's score is its mean over the worlds."""
    count = [0]

    def evaluate(batch: list[tuple[str, Config]]) -> list[float]:
        count[0] += 1
        total = np.zeros(len(batch))
        for world in worlds:
            agents = [make_agent(side, c, f"{side}#{i}") for i, (side, c) in enumerate(batch)]
            label = f"tune pass {count[0]}, seed {world.seed}"
            try:
                scores = run(world, agents, world.seed, label=label)["_scores"]
            finally:
                _close(agents)
            assert isinstance(scores, dict)
            total += [scores[a.name] for a in agents]
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
    parser.add_argument(
        "--tune-budget",
        type=int,
        default=TUNE_BUDGET,
        help="configurations tried per side (ours, VW); 0 skips tuning",
    )
    parser.add_argument("--tune-passes", type=int, default=TUNE_PASSES)
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
        searches = tune(worlds, args.tune_budget, args.tune_passes, with_vw, _log)
        tuning.update(
            budget_meaning=BUDGET_MEANING,
            objective=OBJECTIVE,
            seeds=tune_seeds,
            rounds=worlds[0].n_rounds,
            passes=args.tune_passes,
            seconds=round(time.perf_counter() - began, 1),
        )
        for side, s in searches.items():
            tuned[side] = s.best.config
            tuning[side] = {
                "search_space": {d: " ".join(map(str, v)) for d, v in s.space.dims.items()},
                "search_space_size": s.space.size(),
                "default": describe(side, s.trials[0].config),
                "default_score": round(s.trials[0].score, 4),
                "best": describe(side, s.best.config),
                "best_config": s.best.config,
                "best_score": round(s.best.score, 4),
                "tried": [
                    {"score": round(t.score, 4), "config": describe(side, t.config)}
                    for t in sorted(s.trials, key=lambda t: -t.score)
                ],
            }

    results: dict[int, dict[str, object]] = {}
    for seed in seeds:
        agents = _agents(with_vw, tuned)
        world = World(args.users, args.days, args.decisions, seed)
        _log(f"evaluating on seed {seed} ({world.n_rounds} rounds): {len(agents)} policies")
        try:
            results[seed] = run(world, agents, seed, label=f"seed {seed}")
        finally:
            _close(agents)
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
                "realized": r["policies"][name]["average_reward"],  # type: ignore[index]
                "regret": r["policies"][name]["regret_vs_oracle"],  # type: ignore[index]
            }
            for seed, r in results.items()
        }
        for name in names
    }
    if "vw_tuned" in names:
        # Ours minus tuned VW, average expected reward per round: > 0 is ours ahead.
        public["ours_minus_vw_tuned"] = {
            str(seed): {
                name: round(r["_scores"][name] - r["_scores"]["vw_tuned"], 4)  # type: ignore[index]
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

"""Tuning two sides on the same budget: search spaces, the search, the agents they make.

Used by ``tips bench learning`` (simulated worlds) and ``tips bench replay``
(logged rounds): each side (``ours``: ``PolicyParams``; ``vw``: Vowpal Wabbit
``--cb_explore_adf`` and its knobs) gets the same number of configurations,
tried by the same search, scored by the caller's ``evaluate``.

Search: ``passes`` batches, each a share of the budget run in lockstep; the
first is the side's defaults plus random configurations, later ones half
neighbours of the best so far (one knob moved one step), half random. VW's
random draws cycle over its exploration families, so each family gets its
share.
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from policy.bandit import REWARD_DONE, PolicyParams
from policy.features import CONTEXT_COLUMNS, DIM
from sim.agents import NS_ID, NS_ROW, NS_SHARED, Agent, OurAgent, VwAgent

# The benches' defaults: configurations per side, passes, the seeds tuned on (the
# evaluation uses others).
TUNE_BUDGET = 24
TUNE_PASSES = 3
TUNE_SEEDS = (100, 101)
# Runs of each evaluated policy per evaluation log or world, and of each tuned
# configuration per tuning log or world. A learning policy's result depends on its
# own draws (what it tries, so what it learns): on 20,000-round replay logs one
# configuration's estimate moved by 0.024 (ours) and 0.052 (VW) between policy
# seeds, two to four times the standard error of one run's matched rounds. Ten
# runs, not five: with five the leads between the tuned sides (0.01-0.04) were
# 1.2-1.6 standard errors, too few to tell a lead from the draws (decision 44).
REPEATS = 10
# Runs of each tuned configuration per tuning world or log: with one, the best of
# 24 is often just the luckiest (the simulator's top five configurations of one
# tuning run lay within 0.004, one run's noise; decision 43).
TUNE_REPEATS = 2


def add_tuning_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tune-budget``, ``--tune-passes``, ``--repeats`` and ``--tune-repeats``, as
    both benches take them."""
    parser.add_argument(
        "--tune-budget",
        type=int,
        default=TUNE_BUDGET,
        help="configurations tried per side (ours, VW); 0 skips tuning",
    )
    parser.add_argument("--tune-passes", type=int, default=TUNE_PASSES)
    parser.add_argument(
        "--repeats",
        type=_positive,
        default=REPEATS,
        help="runs of every evaluated policy, each with its own policy seed; the result"
        " is their mean, its standard error their spread",
    )
    parser.add_argument(
        "--tune-repeats",
        type=_positive,
        default=TUNE_REPEATS,
        help="runs of every tuned configuration per tuning log or world",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def policy_seeds(seed: int, repeats: int) -> list[int]:
    """The policies' seeds of ``repeats`` runs: the first is ``seed`` itself."""
    return [seed + 1000 * k for k in range(repeats)]


Result = dict[str, object]


def repeated(
    run_once: Callable[[list[Agent], int, str], Result],
    make_agents: Callable[[], list[Agent]],
    seeds: Sequence[int],
    label: str,
) -> list[Result]:
    """``run_once(agents, seed, label)`` once per policy seed, each time with fresh
    agents (their VW workspaces ended after)."""
    results = []
    for k, seed in enumerate(seeds):
        agents = make_agents()
        tag = f"{label}, run {k + 1}/{len(seeds)}" if len(seeds) > 1 else label
        try:
            results.append(run_once(agents, seed, tag))
        finally:
            close(agents)
    return results


@dataclass(frozen=True)
class Estimate:
    """One policy's result over repeated runs: their mean and its standard error."""

    runs: tuple[float, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.runs))

    @property
    def standard_error(self) -> float | None:
        """The runs' spread / sqrt(runs); None for one run (no spread to measure)."""
        if len(self.runs) < 2:
            return None
        return float(np.std(self.runs, ddof=1) / np.sqrt(len(self.runs)))

    def minus(self, other: Estimate) -> dict[str, float | None]:
        """The difference of the means, with its standard error (independent runs)."""
        mine, theirs = self.standard_error, other.standard_error
        se = None if mine is None or theirs is None else round(float(np.hypot(mine, theirs)), 4)
        return {"difference": round(self.mean - other.mean, 4), "standard_error": se}


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
    # Tried in the first pass after the default: the best configurations earlier
    # tuning runs found, so that a run need not find them again by luck (ours'
    # default is itself such a configuration). Ones outside the space are skipped.
    starts: tuple[Config, ...] = ()

    def holds(self, config: Config) -> bool:
        """Whether every knob of ``config`` takes one of its dimension's values."""
        return all(d in self.dims and v in self.dims[d] for d, v in config.items())

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


def _ours_canonical(config: Config) -> Config:
    out = dict(config)
    if out.get("arm_alpha") == out["alpha"]:
        out["arm_alpha"] = None  # the per-tip bonus as wide as the shared one
    return out


OURS_SPACE = Space(
    dims={
        "alpha": (0.03, 0.1, 0.2, 0.3, 0.5, 1.0),
        "temperature": (0.001, 0.003, 0.01, 0.03, 0.1),
        "epsilon": (0.005, 0.01, 0.02, 0.05),
        "arm_prior": (0.5, 1.0, 2.0, 5.0, 10.0, 20.0),
        "ridge": (0.1, 0.3, 1.0, 3.0, 10.0),
        # None: alpha. Its own width lets the per-tip bonus stay wide when tuning
        # narrows the shared one.
        "arm_alpha": (None, 0.1, 0.2, 0.3, 0.5, 1.0),
        "arm_optimism": (0.0, 0.03, 0.1, 0.3),
    },
    default=PolicyParams().__dict__,
    canonical=_ours_canonical,
    # What `tips bench learning` and `tips bench replay` tuned ours to in their
    # runs before decision 44 (docs/policy.md). Changing them changes every
    # later search's path: do it with the benches run again and recorded.
    starts=(
        {
            "alpha": 1.0,
            "temperature": 0.01,
            "epsilon": 0.005,
            "arm_prior": 1.0,
            "ridge": 10.0,
            "arm_alpha": 0.1,
            "arm_optimism": 0.3,
        },
        {
            "alpha": 0.1,
            "temperature": 0.003,
            "epsilon": 0.05,
            "arm_prior": 5.0,
            "ridge": 10.0,
            "arm_alpha": 0.2,
            "arm_optimism": 0.1,
        },
    ),
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
    # VW's best of the same runs of both benches, as ours' starts: `--squarecb
    # --gamma_scale 100` with the tip id, -l 4 --power_t 0 -q sa -q si (the
    # learning bench) and -l 2 --power_t 0.5 -q si (replay). Without them one
    # run's search ended on epsilon-greedy, 0.04 below these (decision 44).
    starts=(
        {
            "explore": "squarecb",
            "gamma_scale": 100,
            "l": 4.0,
            "power_t": 0.0,
            "tip_id": True,
            "q": f"{NS_SHARED}{NS_ROW} {NS_SHARED}{NS_ID}",
        },
        {
            "explore": "squarecb",
            "gamma_scale": 100,
            "l": 2.0,
            "power_t": 0.5,
            "tip_id": True,
            "q": f"{NS_SHARED}{NS_ID}",
        },
    ),
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


@dataclass(frozen=True)
class Layout:
    """The rows the agents see: their width, and which columns are the round's
    context (equal on every candidate), which VW reads from its ``shared`` line so
    ``-q`` can cross them. ``context=None``: no such columns, no crosses to tune."""

    dim: int
    context: tuple[int, ...] | None


# policy.features rows, as the learning bench and the recommender build them.
POLICY_ROWS = Layout(DIM, CONTEXT_COLUMNS)


def vw_space(layout: Layout) -> Space:
    """VW's space for ``layout``: without context columns there is nothing to cross."""
    if layout.context is not None:
        return VW_SPACE
    return replace(VW_SPACE, dims={**VW_SPACE.dims, "q": ("",)})


def vw_describe(config: Config, layout: Layout = POLICY_ROWS) -> str:
    """The configuration as one string: VW's command line and the features it sees."""
    options, tip_id = vw_setup(config)
    if layout.context is not None:
        features = f"shared |{NS_SHARED} context, |{NS_ROW} rest of the row"
    else:
        features = f"|{NS_ROW} the row"
    return f"--cb_explore_adf {options}  [{features}{f', |{NS_ID} tip id' if tip_id else ''}]"


def make_agent(side: str, config: Config, name: str, layout: Layout = POLICY_ROWS) -> Agent:
    if side == "ours":
        return OurAgent(layout.dim, PolicyParams(**config), name=name)
    options, tip_id = vw_setup(config)
    return VwAgent(options, name=name, with_arm_id=tip_id, context_columns=layout.context)


def describe(side: str, config: Config, layout: Layout = POLICY_ROWS) -> str:
    if side == "ours":
        return " ".join(f"{k}={v:g}" for k, v in config.items() if v is not None)
    return vw_describe(config, layout)


def close(agents: Sequence[Agent]) -> None:
    """Ends the VW workspaces among ``agents``."""
    for agent in agents:
        if isinstance(agent, VwAgent):
            agent.close()


def report(searches: Mapping[str, Search], layout: Layout = POLICY_ROWS) -> dict[str, object]:
    """Per side: its space, the defaults' and the best configuration's scores, and
    every configuration tried with its score (best first)."""
    return {
        side: {
            "search_space": {d: " ".join(map(str, v)) for d, v in s.space.dims.items()},
            "search_space_size": s.space.size(),
            "default": describe(side, s.trials[0].config, layout),
            "default_score": round(s.trials[0].score, 4),
            "best": describe(side, s.best.config, layout),
            "best_config": s.best.config,
            "best_score": round(s.best.score, 4),
            "tried": [
                {"score": round(t.score, 4), "config": describe(side, t.config, layout)}
                for t in sorted(s.trials, key=lambda t: -t.score)
            ],
        }
        for side, s in searches.items()
    }


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
            for config in self.space.starts:
                if self.space.holds(config):
                    take({**self.space.default, **config})
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
    layout: Layout = POLICY_ROWS,
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
            log(f"  {side} {score:.4f}  {describe(side, config, layout)}")
        status = "; ".join(
            f"{side} {len(s.trials)}/{budget} tried, best {s.best.score:.4f}"
            f" ({describe(side, s.best.config, layout)})"
            for side, s in searches.items()
        )
        log(f"tune pass {p + 1}/{passes} ({time.perf_counter() - start:.0f} s): {status}")
    return searches

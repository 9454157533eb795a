"""Replay evaluation of logged bandit data (Li et al. 2011), format in docs/replay-format.md.

For each logged round in order, each policy chooses among the candidate
actions; when its choice equals the logged action the round counts (its
reward is added and the policy learns from it online), otherwise the round is
skipped for that policy. The estimate is the mean reward over counted rounds,
unbiased when the logging policy chose uniformly at random; an IPS estimate
(sum of matched reward / logged propensity, over all rounds) is printed too.
Evaluates our policy, Vowpal Wabbit cb_explore_adf and uniform random on the
same rows; prints JSON and writes bench/out/replay.png.

    tips bench replay --rounds ROUNDS.csv [--actions ACTIONS.csv] [--seed 1] [--no-vw]
    tips bench replay --generate DIR [--count 20000] [--tips 16]   sample logs from sim/

Rows: with ACTIONS.csv, ``[1, x, a, x (x) a]`` (context, action features, their
cross); without, each action gets its own copy of ``[1, x]`` (a disjoint model).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `sim` is a top-level package of the repository

from policy.bandit import REWARD_DONE, REWARD_SNOOZE  # noqa: E402
from policy.features import (  # noqa: E402
    CATEGORIES,
    FEATURE_NAMES,
    context_features,
)
from sim.agents import Agent, OurAgent, UniformAgent, VwAgent  # noqa: E402
from sim.reactions import DONE, SNOOZE, draw  # noqa: E402
from sim.world import World  # noqa: E402

OUT = ROOT / "bench" / "out"


class FormatError(ValueError):
    """The logs do not follow docs/replay-format.md; the message names the file and column."""


def _read(path: Path) -> tuple[list[str], np.ndarray]:
    with path.open(newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise FormatError(f"{path}: empty file") from None
        data = []
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise FormatError(f"{path}:{line}: {len(row)} fields, header has {len(header)}")
            try:
                data.append([float(v) for v in row])
            except ValueError as exc:
                raise FormatError(f"{path}:{line}: not a number ({exc})") from None
    return header, np.array(data, dtype=np.float64).reshape(len(data), len(header))


def load(rounds_path: Path, actions_path: Path | None) -> dict[str, object]:
    header, data = _read(rounds_path)
    for column in ("action", "reward", "propensity"):
        if column not in header:
            raise FormatError(f"{rounds_path}: missing column {column!r}")
    extra = [
        h for h in header if h not in ("action", "reward", "propensity") and not h.startswith("x_")
    ]
    if extra:
        raise FormatError(f"{rounds_path}: unexpected columns {extra} (features are x_<name>)")
    col = {h: i for i, h in enumerate(header)}
    actions = data[:, col["action"]].astype(np.int64)
    propensity = data[:, col["propensity"]]
    if np.any((propensity <= 0) | (propensity > 1)):
        bad = int(np.flatnonzero((propensity <= 0) | (propensity > 1))[0]) + 2
        raise FormatError(f"{rounds_path}:{bad}: propensity must be in (0, 1]")
    x = data[:, [i for h, i in col.items() if h.startswith("x_")]]
    if actions_path is not None:
        a_header, a_data = _read(actions_path)
        if "action" not in a_header:
            raise FormatError(f"{actions_path}: missing column 'action'")
        a_col = [i for i, h in enumerate(a_header) if h.startswith("a_")]
        ids = a_data[:, a_header.index("action")].astype(np.int64)
        unknown = sorted(set(actions.tolist()) - set(ids.tolist()))
        if unknown:
            raise FormatError(f"{rounds_path}: actions {unknown[:5]} are not in {actions_path}")
        action_features = a_data[:, a_col]
    else:
        ids = np.unique(actions)
        action_features = None
    return {
        "ids": ids,
        "actions": actions,
        "reward": data[:, col["reward"]],
        "propensity": propensity,
        "x": x,
        "action_features": action_features,
    }


def candidate_rows(
    x: np.ndarray, ids: np.ndarray, action_features: np.ndarray | None
) -> np.ndarray:
    """Rows [n_actions, dim] for one round's context ``x``."""
    ctx = np.concatenate(([1.0], x))
    if action_features is not None:
        k = len(ids)
        return np.hstack(
            [
                np.tile(ctx, (k, 1)),
                action_features,
                np.einsum("i,kj->kij", x, action_features).reshape(k, -1),
            ]
        )
    rows = np.zeros((len(ids), len(ids) * len(ctx)))
    for i in range(len(ids)):
        rows[i, i * len(ctx) : (i + 1) * len(ctx)] = ctx
    return rows


def replay(logs: dict[str, object], agents: list[Agent], seed: int) -> dict[str, object]:
    ids = np.asarray(logs["ids"])
    actions = np.asarray(logs["actions"])
    reward = np.asarray(logs["reward"])
    propensity = np.asarray(logs["propensity"])
    x = np.asarray(logs["x"])
    af = logs["action_features"]
    action_features = None if af is None else np.asarray(af)
    index_of = {int(a): i for i, a in enumerate(ids)}
    arms = [str(int(a)) for a in ids]
    rng = {a.name: np.random.default_rng(seed) for a in agents}
    matched = {a.name: 0 for a in agents}
    total = {a.name: 0.0 for a in agents}
    ips = {a.name: 0.0 for a in agents}
    curves: dict[str, list[float]] = {a.name: [] for a in agents}
    n = len(actions)
    for t in range(n):
        rows = candidate_rows(x[t], ids, action_features)
        logged = index_of[int(actions[t])]
        for agent in agents:
            choice, _ = agent.act(arms, rows, rng[agent.name])
            if choice != logged:
                continue
            agent.learn(choice, float(reward[t]))
            matched[agent.name] += 1
            total[agent.name] += float(reward[t])
            ips[agent.name] += float(reward[t]) / float(propensity[t])
            curves[agent.name].append(total[agent.name] / matched[agent.name])
        if (t + 1) % 5000 == 0:
            print(f"replay: {t + 1}/{n} rounds", file=sys.stderr)
    return {
        "rounds": n,
        "actions": len(ids),
        "logged_average_reward": round(float(reward.mean()), 4),
        "policies": {
            name: {
                "rounds_matched": matched[name],
                "estimated_reward_per_round": round(total[name] / matched[name], 4)
                if matched[name]
                else None,
                "ips_estimate": round(ips[name] / n, 4),
            }
            for name in matched
        },
        "_curves": curves,
    }


def generate(out: Path, count: int, tips: int, seed: int) -> tuple[Path, Path]:
    """Writes ROUNDS.csv and ACTIONS.csv logged from the simulator by uniform random."""
    world = World(users=max(count // 150, 1), days=25, decisions_per_day=6, seed=seed)
    per = max(tips // len(CATEGORIES), 1)
    chosen = [i for i, t in enumerate(world.catalog) if int(t.features.catalog_tip[-2:]) < per]
    # Its own stream: the logger must not share draws with the policies replayed.
    rng = np.random.default_rng([seed, 0x10C])
    out.mkdir(parents=True, exist_ok=True)
    rounds_path, actions_path = out / "ROUNDS.csv", out / "ACTIONS.csv"
    with actions_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["action", *(f"a_{c}" for c in CATEGORIES), "a_effort", "a_minutes"])
        for k, i in enumerate(chosen):
            tip = world.catalog[i].features
            onehot = [1 if tip.category == c else 0 for c in CATEGORIES]
            w.writerow([k, *onehot, tip.effort - 2, round(tip.minutes_needed / 60, 4)])
    written = 0
    with rounds_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["action", "reward", "propensity", *(f"x_{n}" for n in FEATURE_NAMES)])
        for rnd in world.rounds():
            if written >= count:
                break
            k = int(rng.integers(len(chosen)))
            reaction = draw(rnd.probabilities[chosen[k]], rnd.u)
            r = {DONE: REWARD_DONE, SNOOZE: REWARD_SNOOZE}.get(reaction, 0.0)
            ctx = context_features(rnd.context)
            w.writerow([k, r, round(1 / len(chosen), 6), *(round(float(v), 5) for v in ctx)])
            written += 1
    return rounds_path, actions_path


def plot(result: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = result["_curves"]
    assert isinstance(curves, dict)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in curves.items():
        ax.plot(np.arange(1, len(curve) + 1), curve, label=name)
    ax.set(title="Replay: reward per matched round", xlabel="matched rounds", ylabel="reward")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tips bench replay", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=Path, help="ROUNDS.csv")
    parser.add_argument("--actions", type=Path, help="ACTIONS.csv (optional)")
    parser.add_argument("--generate", type=Path, metavar="DIR", help="write sample logs to DIR")
    parser.add_argument("--count", type=int, default=20000, help="rounds to generate")
    parser.add_argument("--tips", type=int, default=16, help="actions to generate")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-vw", action="store_true", help="skip Vowpal Wabbit")
    parser.add_argument("--plot", type=Path, default=OUT / "replay.png")
    args = parser.parse_args(argv)
    if args.generate:
        paths = generate(args.generate, args.count, args.tips, args.seed)
        print(json.dumps({"rounds": str(paths[0]), "actions": str(paths[1])}))
        return 0
    if not args.rounds:
        parser.error("--rounds is required (or --generate DIR)")
    try:
        logs = load(args.rounds, args.actions)
    except (FormatError, OSError) as exc:
        print(f"tips bench replay: {exc}", file=sys.stderr)
        return 2
    dim = candidate_rows(
        np.asarray(logs["x"])[0], np.asarray(logs["ids"]), logs["action_features"]
    ).shape[1]  # type: ignore[arg-type]
    agents: list[Agent] = [OurAgent(dim), UniformAgent()]
    if not args.no_vw:
        agents += [VwAgent(name="vw_cb_explore_adf"), VwAgent("--squarecb", name="vw_squarecb")]
    result = replay(logs, agents, args.seed)
    plot(result, args.plot)
    public = {k: v for k, v in result.items() if not k.startswith("_")}
    public["plot"] = str(args.plot)
    print(json.dumps(public, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

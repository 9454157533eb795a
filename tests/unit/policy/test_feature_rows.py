"""``features.rows`` (all candidates at once) gives exactly ``feature_vector``'s rows."""

from __future__ import annotations

import numpy as np

from policy import catalog
from policy.features import (
    MINUTES_CAP,
    TipFeatures,
    feature_vector,
    rows,
    tip_block,
)

CATALOG = "policy/data/tips.v1.json"


def _tips() -> list[TipFeatures]:
    _, tips = catalog.from_file(CATALOG)
    entries = [catalog.entry(t) for t in tips]
    extra = TipFeatures("odd", "uncategorised", 7, 500, frozenset())  # no one-hot slot
    return [
        *(
            TipFeatures(e.name, e.category, e.effort, e.minutes_needed, e.day_parts)
            for e in entries
        ),
        extra,
    ]


def _contexts(rng: np.random.Generator) -> list[dict[str, float]]:
    out: list[dict[str, float]] = [{}]
    for _ in range(200):
        ctx = {
            "local_hour": float(rng.uniform(0, 24)),
            "weekday": float(rng.integers(0, 7)),
            "in_meeting": float(rng.integers(0, 2)),
            "affinity_movement": float(rng.uniform(-0.2, 1.2)),
            "affinity_uncategorised": float(rng.uniform(0, 1)),
        }
        optional = {
            "minutes_to_next_meeting": float(rng.uniform(-10, 400)),
            "free_block_minutes": float(
                rng.choice([5.0, 10.0, 15.0, rng.uniform(0, 2 * MINUTES_CAP)])
            ),
            "steps_today": float(rng.uniform(0, 20000)),
            "steps_usual_by_now": float(rng.uniform(0, 9000)),
            "sleep_last_night_minutes": float(rng.uniform(0, 800)),
            "mood": float(rng.uniform(-1.5, 1.5)),
        }
        ctx.update({k: v for k, v in optional.items() if rng.random() < 0.7})
        out.append(ctx)
    return out


def test_rows_equal_feature_vectors_for_every_candidate_subset() -> None:
    tips = _tips()
    block = tip_block(tips)
    rng = np.random.default_rng(7)
    for ctx in _contexts(rng):
        index = sorted(rng.choice(len(tips), size=int(rng.integers(1, len(tips))), replace=False))
        got = rows(ctx, block, index)
        want = np.stack([feature_vector(ctx, tips[i]) for i in index])
        assert got.shape == want.shape
        assert np.array_equal(got, want)  # bit for bit: logged rows must not change


def test_rows_of_no_candidate_is_empty() -> None:
    block = tip_block(_tips())
    assert rows({}, block, []).shape == (0, feature_vector({}, block.tips[0]).shape[0])

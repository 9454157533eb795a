"""A synthetic tip catalog for the simulator: 64 tips over 8 categories, each
with a hidden quality (how much people like it beyond its visible features)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from policy.features import CATEGORIES, TipFeatures

# Day parts each category usually fits (the visible time-of-day fit).
_PARTS = {
    "movement": ("morning", "afternoon"),
    "focus": ("morning", "afternoon"),
    "sleep": ("evening", "night"),
    "hydration": (),
    "planning": ("morning",),
    "social": ("afternoon", "evening"),
    "mindfulness": (),
    "nutrition": ("morning", "afternoon", "evening"),
}


@dataclass(frozen=True)
class SimTip:
    features: TipFeatures
    quality: float  # hidden: added to every user's utility for this tip


def make_catalog(per_category: int = 8, seed: int = 7) -> list[SimTip]:
    rng = np.random.default_rng(seed)
    tips = []
    for category in CATEGORIES:
        for i in range(per_category):
            effort = int(rng.integers(1, 4))
            minutes = int(rng.choice([2, 5, 10, 15, 20, 30, 45]))
            parts = frozenset(_PARTS[category]) if rng.random() < 0.8 else frozenset()
            tips.append(
                SimTip(
                    TipFeatures(f"{category}-{i:02d}", category, effort, minutes, parts),
                    quality=float(rng.normal(0.0, 0.6)),
                )
            )
    return tips

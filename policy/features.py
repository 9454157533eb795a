"""Feature vectors for the tip policy. Pure.

A decision scores each candidate tip on one row: the user's context
(``FEATURE_NAMES``, normalised from the raw ``CONTEXT_KEYS``), the tip's own
features, and their crosses (context x category, context x effort/length), so
one shared linear model can learn "a walk when steps lag and the block is
free" without a parameter per user. Every value is in about [-1, 1].

Raw context keys (the recommender fills what it knows; a missing key takes
its default, documented below):

=========================  ==============================================  =======
key                        meaning                                         default
=========================  ==============================================  =======
local_hour                 hour of day in the user's timezone, 0..24       12
weekday                    0 = Monday .. 6 = Sunday                        2
minutes_to_next_meeting    minutes until the next busy event               no meeting (cap)
free_block_minutes         length of the free time from now                cap
in_meeting                 1 when a busy event is on now                   0
steps_today                steps since local midnight                      usual
steps_usual_by_now         the user's usual steps by this hour             0 (unknown)
sleep_last_night_minutes   minutes asleep last night                       420
mood                       last mood check-in, -1 (low) .. 1 (high)        0
affinity_<category>        user's smoothed done-rate for that category     0.5
=========================  ==============================================  =======
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# Tip categories with a one-hot slot; any other category gets none (all zeros).
CATEGORIES: tuple[str, ...] = (
    "movement",
    "focus",
    "sleep",
    "hydration",
    "planning",
    "social",
    "mindfulness",
    "nutrition",
)
DAY_PARTS: tuple[str, ...] = ("morning", "afternoon", "evening", "night")

# Minutes are capped here: beyond four hours "plenty of time" is all that matters.
MINUTES_CAP = 240.0

FEATURE_NAMES: tuple[str, ...] = (
    "hour_sin",
    "hour_cos",
    "weekend",
    "minutes_to_next_meeting",
    "free_block_minutes",
    "in_meeting",
    "steps_today_ratio",
    "sleep_last_night_hours",
    "mood",
)
TIP_FEATURE_NAMES: tuple[str, ...] = (
    *(f"category_{c}" for c in CATEGORIES),
    "effort",
    "minutes_needed",
    "day_part_fit",
    "fits_free_block",
    "category_affinity",
)
# Tip features crossed with every context feature, besides the category one-hot.
_CROSSED_TIP = ("effort", "minutes_needed")

ROW_NAMES: tuple[str, ...] = (
    "bias",
    *FEATURE_NAMES,
    *TIP_FEATURE_NAMES,
    *(f"{f}*category_{c}" for f in FEATURE_NAMES for c in CATEGORIES),
    *(f"{f}*{t}" for f in FEATURE_NAMES for t in _CROSSED_TIP),
)
DIM = len(ROW_NAMES)
# The rows' schema, as decisions log it and registered versions must declare it.
SCHEMA_VERSION = f"features-v1-d{DIM}"
CONTEXT_DIM = len(FEATURE_NAMES)
# The row's columns that are the user's context: the same on every candidate.
CONTEXT_COLUMNS: tuple[int, ...] = tuple(ROW_NAMES.index(f) for f in FEATURE_NAMES)


@dataclass(frozen=True)
class TipFeatures:
    """What the policy knows about a catalog tip. ``effort``: 1 low .. 3 high."""

    catalog_tip: str
    category: str
    effort: int
    minutes_needed: int
    day_parts: frozenset[str]


def day_part(local_hour: float) -> str:
    """The day part of a local hour: morning 5-12, afternoon 12-17, evening 17-22."""
    if 5 <= local_hour < 12:
        return "morning"
    if 12 <= local_hour < 17:
        return "afternoon"
    if 17 <= local_hour < 22:
        return "evening"
    return "night"


def _minutes(value: float) -> float:
    return min(max(value, 0.0), MINUTES_CAP) / MINUTES_CAP


def context_features(context: Mapping[str, float]) -> np.ndarray:
    """The normalised context, in ``FEATURE_NAMES`` order."""
    hour = float(context.get("local_hour", 12.0)) % 24.0
    angle = 2.0 * math.pi * hour / 24.0
    usual = float(context.get("steps_usual_by_now", 0.0))
    steps = float(context.get("steps_today", usual))
    # Ratio to the usual, capped at 2 and mapped to [-1, 1]: 0 means "as usual".
    ratio = min(steps / usual, 2.0) - 1.0 if usual > 0 else 0.0
    sleep_hours = float(context.get("sleep_last_night_minutes", 420.0)) / 60.0
    return np.array(
        [
            math.sin(angle),
            math.cos(angle),
            1.0 if int(context.get("weekday", 2)) >= 5 else 0.0,
            _minutes(float(context.get("minutes_to_next_meeting", MINUTES_CAP))),
            _minutes(float(context.get("free_block_minutes", MINUTES_CAP))),
            1.0 if context.get("in_meeting", 0.0) else 0.0,
            ratio,
            (min(max(sleep_hours, 0.0), 12.0) - 7.0) / 5.0,
            min(max(float(context.get("mood", 0.0)), -1.0), 1.0),
        ]
    )


def tip_features(context: Mapping[str, float], tip: TipFeatures) -> np.ndarray:
    """The tip's features in this context, in ``TIP_FEATURE_NAMES`` order."""
    onehot = [1.0 if tip.category == c else 0.0 for c in CATEGORIES]
    part = day_part(float(context.get("local_hour", 12.0)) % 24.0)
    free = float(context.get("free_block_minutes", MINUTES_CAP))
    affinity = float(context.get(f"affinity_{tip.category}", 0.5))
    return np.array(
        [
            *onehot,
            (min(max(tip.effort, 1), 3) - 2) / 1.0,
            _minutes(float(tip.minutes_needed)) * 4.0,  # an hour maps to 1
            1.0 if not tip.day_parts or part in tip.day_parts else 0.0,
            1.0 if tip.minutes_needed <= free else 0.0,
            (min(max(affinity, 0.0), 1.0) - 0.5) * 2.0,
        ]
    )


def feature_vector(context: Mapping[str, float], tip: TipFeatures) -> np.ndarray:
    """The row a candidate is scored on: ``DIM`` floats in ``ROW_NAMES`` order."""
    ctx = context_features(context)
    return row_from_parts(ctx, tip_features(context, tip))


def row_from_parts(ctx: np.ndarray, tipf: np.ndarray) -> np.ndarray:
    """Assembles a row from ``context_features`` and ``tip_features`` (reuse ``ctx``)."""
    n_cat = len(CATEGORIES)
    crossed = tipf[n_cat : n_cat + len(_CROSSED_TIP)]
    return np.concatenate(
        (
            [1.0],
            ctx,
            tipf,
            np.outer(ctx, tipf[:n_cat]).ravel(),
            np.outer(ctx, crossed).ravel(),
        )
    )


# --- many candidates at once (the decision hot path) -----------------------------------


@dataclass(frozen=True)
class TipBlock:
    """The context-free part of ``tip_features`` for a whole catalog, computed once.

    ``rows`` builds every candidate's row from it with a few array operations,
    the same numbers ``feature_vector`` gives one tip at a time (~5 us a row in
    Python, most of a decision's CPU with 64 tips). A row is
    ``base + coefficient * context[spread]`` (every context-dependent column is
    a context feature times a tip constant: 1, a category's one-hot or the
    tip's effort or length) with three columns set per call: day-part fit,
    fits the free block, affinity.
    """

    tips: tuple[TipFeatures, ...]
    base: np.ndarray  # [N, DIM]: bias and the static tip features; 0 elsewhere
    coefficient: np.ndarray  # [N, DIM]: what multiplies the column's context feature
    minutes_needed: np.ndarray  # [N] raw minutes, for fits_free_block
    part_fit: Mapping[str, np.ndarray]  # day part -> [N] day_part_fit
    categories: tuple[str, ...]  # the distinct categories, for affinity look-ups
    category_index: np.ndarray  # [N] index into ``categories``
    affinity_keys: tuple[str, ...]  # the context key of each category's affinity


# The context feature behind each row column (CONTEXT_DIM: none, a padded 0).
_SPREAD = np.array(
    [
        FEATURE_NAMES.index(name.split("*")[0])
        if name in FEATURE_NAMES or "*" in name
        else CONTEXT_DIM
        for name in ROW_NAMES
    ],
    dtype=np.intp,
)
_TIP_AT = 1 + CONTEXT_DIM  # the first tip feature's column
_PART_FIT, _FITS_FREE, _AFFINITY = (
    ROW_NAMES.index(n) for n in ("day_part_fit", "fits_free_block", "category_affinity")
)


def tip_block(tips: Sequence[TipFeatures]) -> TipBlock:
    """Precompute what ``rows`` needs of ``tips`` (at catalog load)."""
    n_cat = len(CATEGORIES)
    static = np.zeros((len(tips), n_cat + 2))
    for i, tip in enumerate(tips):
        static[i, :n_cat] = [1.0 if tip.category == c else 0.0 for c in CATEGORIES]
        static[i, n_cat] = (min(max(tip.effort, 1), 3) - 2) / 1.0
        static[i, n_cat + 1] = _minutes(float(tip.minutes_needed)) * 4.0
    base = np.zeros((len(tips), DIM))
    base[:, 0] = 1.0
    base[:, _TIP_AT : _TIP_AT + n_cat + 2] = static
    coefficient = np.zeros((len(tips), DIM))
    coefficient[:, 1:_TIP_AT] = 1.0
    at = _TIP_AT + len(TIP_FEATURE_NAMES)
    # Context-major, as ``row_from_parts``: each context feature times every category.
    coefficient[:, at : at + CONTEXT_DIM * n_cat] = np.tile(static[:, :n_cat], CONTEXT_DIM)
    at += CONTEXT_DIM * n_cat
    coefficient[:, at:] = np.tile(static[:, n_cat : n_cat + len(_CROSSED_TIP)], CONTEXT_DIM)
    part_fit = {
        part: np.array([1.0 if not t.day_parts or part in t.day_parts else 0.0 for t in tips])
        for part in DAY_PARTS
    }
    categories = tuple(dict.fromkeys(t.category for t in tips))
    where = {c: i for i, c in enumerate(categories)}
    return TipBlock(
        tips=tuple(tips),
        base=base,
        coefficient=coefficient,
        minutes_needed=np.array([float(t.minutes_needed) for t in tips]),
        part_fit=part_fit,
        categories=categories,
        category_index=np.array([where[t.category] for t in tips], dtype=np.intp),
        affinity_keys=tuple(f"affinity_{c}" for c in categories),
    )


def rows(context: Mapping[str, float], block: TipBlock, index: Sequence[int]) -> np.ndarray:
    """Rows [K, DIM] of the tips ``block.tips[i] for i in index``, as ``feature_vector``."""
    pick = np.asarray(index, dtype=np.intp)
    spread = np.append(context_features(context), 0.0)[_SPREAD]
    part = day_part(float(context.get("local_hour", 12.0)) % 24.0)
    free = float(context.get("free_block_minutes", MINUTES_CAP))
    affinity = np.array(
        [(min(max(float(context.get(k, 0.5)), 0.0), 1.0) - 0.5) * 2.0 for k in block.affinity_keys]
    )
    out = block.coefficient[pick]
    out *= spread
    out += block.base[pick]
    out[:, _PART_FIT] = block.part_fit[part][pick]
    out[:, _FITS_FREE] = block.minutes_needed[pick] <= free
    out[:, _AFFINITY] = affinity[block.category_index[pick]]
    return out

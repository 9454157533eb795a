"""Which catalog tips may be decided for a user now. Pure.

Each check returns the reason a tip (or every tip) is blocked, or None. The
reasons are short stable ids: logs and the ``tips_no_tip`` metric count them.
Checks are ordered cheapest and most common first.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo

from kernel import localtime
from kernel.localtime import QuietWindow
from policy.catalog import Entry
from services.recommender.domain import Features


@dataclass(frozen=True)
class Prefs:
    """What the profile says about a user (defaults when the profile is unknown)."""

    tz: tzinfo = UTC
    time_zone: str = "UTC"
    quiet_hours: tuple[QuietWindow, ...] = ()
    granted: frozenset[str] = frozenset()  # consent ids
    muted: frozenset[str] = frozenset()
    daily_cap: int = 0  # 0: the service default
    known: bool = False  # the profile service answered


@dataclass
class History:
    """A user's recent decisions and reactions (kept in memory by ``history.py``)."""

    # Catalog tip id -> decide times in the last two days, oldest first.
    decided: dict[str, list[datetime]] = field(default_factory=dict)
    # Catalog tip id -> latest DONE reaction time.
    done: dict[str, datetime] = field(default_factory=dict)


def decided_today(history: History, since: datetime) -> int:
    """Distinct catalog tips decided since ``since`` (the local midnight)."""
    return sum(1 for times in history.decided.values() if times and times[-1] >= since)


def user_block(f: Features, prefs: Prefs, history: History, default_cap: int) -> str | None:
    """Why no tip at all may be decided now, or None."""
    if prefs.quiet_hours and localtime.in_quiet_hours(f.now, prefs.tz, prefs.quiet_hours):
        return "quiet_hours"
    cap = prefs.daily_cap or default_cap
    if decided_today(history, f.midnight) >= cap:
        return "daily_cap"
    return None


def tip_block(
    e: Entry,
    f: Features,
    prefs: Prefs,
    history: History,
    suppressed: Mapping[str, datetime],
) -> str | None:
    """Why catalog tip ``e`` may not be decided now, or None."""
    return _tip_block(e, f, prefs, history, suppressed, f.midnight, f.day_part)


def _static_block(e: Entry, prefs: Prefs, part: str, kinds: frozenset[int]) -> str | None:
    """The checks that read only the user's settings, the day part and recent signal kinds."""
    if e.category in prefs.muted:
        return "muted_category"
    if not e.required_consents <= prefs.granted:
        return "consent"
    if e.day_parts and part not in e.day_parts:
        return "day_part"
    if not e.signals_needed <= kinds:
        return "signals_needed"
    return None


def _dynamic_block(
    e: Entry,
    f: Features,
    history: History,
    suppressed: Mapping[str, datetime],
    midnight: datetime,
) -> str | None:
    until = suppressed.get(e.id)
    if until is not None and until > f.now:
        return "snoozed"  # snoozed, or dismissed/done a short while ago
    done = history.done.get(e.id)
    if done is not None and done >= midnight:
        return "done_today"
    times = history.decided.get(e.id, ())
    if e.cooldown is not None and times and f.now - times[-1] < e.cooldown:
        return "cooldown"
    if e.max_per_day and sum(1 for t in times if t >= midnight) >= e.max_per_day:
        return "max_per_day"
    if e.min_free_block_minutes and (
        f.free_minutes is None or f.free_minutes < e.min_free_block_minutes
    ):
        return "free_block"
    if f.free_minutes is not None and e.minutes_needed > f.free_minutes:
        return "does_not_fit"
    return None


def _tip_block(
    e: Entry,
    f: Features,
    prefs: Prefs,
    history: History,
    suppressed: Mapping[str, datetime],
    midnight: datetime,
    part: str,
) -> str | None:
    # ``midnight`` and ``part`` are the same for every tip: computed once per decision.
    return _static_block(e, prefs, part, f.recent_kinds) or _dynamic_block(
        e, f, history, suppressed, midnight
    )


class StaticChecks:
    """The static checks of one catalog tuple, cached by their inputs.

    Muted categories, consents, day part and recent signal kinds take few
    distinct values across users, so their outcome for every tip is kept
    (bounded) and a decision runs only the checks of its own history.
    """

    MAX_KEYS = 4096

    def __init__(self, entries: Sequence[Entry]) -> None:
        self.entries = entries
        self._cache: dict[
            tuple[frozenset[str], frozenset[str], str, frozenset[int]],
            tuple[tuple[int, ...], Counter[str]],
        ] = {}

    def passing(
        self, prefs: Prefs, part: str, kinds: frozenset[int]
    ) -> tuple[tuple[int, ...], Counter[str]]:
        """Positions passing the static checks, and the reasons of the others (do not mutate)."""
        key = (prefs.muted, prefs.granted, part, kinds)
        found = self._cache.get(key)
        if found is None:
            ok: list[int] = []
            reasons: Counter[str] = Counter()
            for i, e in enumerate(self.entries):
                reason = _static_block(e, prefs, part, kinds)
                if reason is None:
                    ok.append(i)
                else:
                    reasons[reason] += 1
            if len(self._cache) >= self.MAX_KEYS:
                self._cache.clear()
            found = self._cache[key] = (tuple(ok), reasons)
        return found


def eligible(
    entries: Sequence[Entry],
    f: Features,
    prefs: Prefs,
    history: History,
    suppressed: Mapping[str, datetime],
    default_cap: int,
) -> tuple[list[Entry], Counter[str]]:
    """The eligible entries, and how many were blocked for each reason."""
    index, reasons = eligible_index(entries, f, prefs, history, suppressed, default_cap)
    return [entries[i] for i in index], reasons


def eligible_index(
    entries: Sequence[Entry],
    f: Features,
    prefs: Prefs,
    history: History,
    suppressed: Mapping[str, datetime],
    default_cap: int,
    static: StaticChecks | None = None,
) -> tuple[list[int], Counter[str]]:
    """``eligible`` as positions in ``entries`` (the decision's feature rows are by position).

    ``static`` (built over the same ``entries``) caches the checks that do not
    read the user's history.
    """
    blocked = user_block(f, prefs, history, default_cap)
    if blocked is not None:
        return [], Counter({blocked: len(entries)})
    if static is None or static.entries is not entries:
        static = StaticChecks(entries)
    midnight, part = f.midnight, f.day_part
    passing, static_reasons = static.passing(prefs, part, f.recent_kinds)
    reasons = Counter(static_reasons)
    out: list[int] = []
    for i in passing:
        reason = _dynamic_block(entries[i], f, history, suppressed, midnight)
        if reason is None:
            out.append(i)
        else:
            reasons[reason] += 1
    return out, reasons

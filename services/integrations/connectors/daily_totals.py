"""Per-day totals that grow during the day, sent as increases. Pure.

A provider's daily total (steps, active minutes) keeps growing while the day
runs and a tracker may sync hours late. The events service stores a
``client_signal_id`` once, so a signal carrying "the day's total" would freeze
the first value it saw. Instead a connector keeps a ledger (in its cursor) of
the totals it has already sent per recent day and sends only the increase;
the signals of one day then sum to the provider's total.

A decrease (the provider corrected a day down) is reported as a correction
and not sent: signals are facts already stored and cannot be negative. The
ledger keeps the larger value, so the day's next increase is counted from
what was sent. See docs/connectors.md, "Daily totals as increases".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any


@dataclass(frozen=True)
class Totals:
    """One day's totals (what the provider reports, or what was sent)."""

    steps: int = 0
    active_minutes: int = 0


@dataclass(frozen=True)
class Increase:
    """What to send for ``day``; ``sent`` is the day's total once it is."""

    day: date
    steps: int
    active_minutes: int
    sent: Totals


@dataclass
class Reconciled:
    increases: list[Increase] = field(default_factory=list)
    # The ledger to store: what has been sent per day still being re-read.
    ledger: dict[date, Totals] = field(default_factory=dict)
    # Days whose provider total fell below what was already sent.
    corrections: list[date] = field(default_factory=list)


def reconcile(
    sent: Mapping[date, Totals], seen: Mapping[date, Totals], keep_from: date
) -> Reconciled:
    """Increases of ``seen`` over ``sent``, oldest day first; the ledger from ``keep_from`` on."""
    out = Reconciled(ledger={d: t for d, t in sent.items() if d >= keep_from})
    for day in sorted(seen):
        now, before = seen[day], sent.get(day, Totals())
        if now.steps < before.steps or now.active_minutes < before.active_minutes:
            out.corrections.append(day)
        after = Totals(max(now.steps, before.steps), max(now.active_minutes, before.active_minutes))
        if after != before:
            out.increases.append(
                Increase(
                    day,
                    after.steps - before.steps,
                    after.active_minutes - before.active_minutes,
                    after,
                )
            )
        if day >= keep_from and after != Totals():
            out.ledger[day] = after
    return out


def ledger_from_json(value: object) -> dict[date, Totals]:
    """The cursor's ``{"YYYY-MM-DD": [steps, active_minutes]}``; unreadable entries dropped."""
    ledger: dict[date, Totals] = {}
    if not isinstance(value, Mapping):
        return ledger
    for key, pair in value.items():
        try:
            day = date.fromisoformat(str(key))
        except ValueError:
            continue
        if (
            isinstance(pair, list)
            and len(pair) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in pair)
        ):
            ledger[day] = Totals(pair[0], pair[1])
    return ledger


def ledger_to_json(ledger: Mapping[date, Totals]) -> dict[str, Any]:
    return {d.isoformat(): [t.steps, t.active_minutes] for d, t in sorted(ledger.items())}

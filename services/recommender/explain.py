"""Tip texts and explanations from catalog templates and the decision context. Pure.

A template is filled only when every value it names is known (a tip about
your meeting says nothing when there is no meeting): otherwise the
explanation falls back to the clearest fact behind the tip's needed signals,
then to a generic line. Times are the user's local time ("3 pm").
"""

from __future__ import annotations

from datetime import datetime

from policy.catalog import Entry
from services.recommender.domain import Features
from tips.events.v1 import signal_pb2

K = signal_pb2.SignalKind
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def clock(local: datetime) -> str:
    """``3 pm``, ``3:30 pm``, ``12 am``."""
    hour = local.hour % 12 or 12
    suffix = "am" if local.hour < 12 else "pm"
    return f"{hour} {suffix}" if local.minute == 0 else f"{hour}:{local.minute:02d} {suffix}"


def sleep_text(minutes: int) -> str:
    hours, rest = divmod(minutes, 60)
    return f"{hours} h {rest:02d} min"


def values(f: Features, e: Entry) -> dict[str, str]:
    """The known placeholder values for ``e`` in context ``f``."""
    out = {
        "minutes_needed": str(e.minutes_needed),
        "local_time": clock(f.local),
        "weekday": WEEKDAYS[f.local.weekday()],
        "day_part": f.day_part,
    }
    if f.free_minutes is not None:
        out["free_minutes"] = str(f.free_minutes)
    if f.next_event_start is not None:
        out["next_event_start"] = clock(f.next_event_start.astimezone(f.local.tzinfo))
    if f.steps_today is not None:
        out["steps_today"] = f"{f.steps_today:,}"
    if f.steps_usual is not None:
        out["steps_usual"] = f"{round(f.steps_usual):,}"
        if f.steps_today is not None and f.steps_usual - f.steps_today >= 1:
            out["steps_gap"] = f"{round(f.steps_usual - f.steps_today):,}"
    if f.sleep_minutes is not None:
        out["sleep"] = sleep_text(f.sleep_minutes)
    if f.mood_score is not None:
        out["mood_score"] = str(f.mood_score)
    return out


def render(template: str, known: dict[str, str]) -> str | None:
    """``template`` filled, or None when it names a value that is not known."""
    try:
        return template.format_map(known)
    except (KeyError, ValueError, IndexError):
        return None


_FACTS = (
    (
        K.SIGNAL_KIND_CALENDAR_EVENT,
        "You have {free_minutes} free minutes before your {next_event_start} meeting.",
    ),
    (K.SIGNAL_KIND_CALENDAR_EVENT, "You have {free_minutes} free minutes today."),
    (K.SIGNAL_KIND_SLEEP, "You slept {sleep} last night."),
    (K.SIGNAL_KIND_STEPS, "You have walked {steps_today} steps today."),
    (K.SIGNAL_KIND_MOOD, "You checked in with a mood of {mood_score}/5."),
)


def _fact(f: Features, e: Entry, known: dict[str, str]) -> str | None:
    """The clearest fact behind the tip's needed signals."""
    for kind, template in _FACTS:
        if kind in e.signals_needed and (text := render(template, known)) is not None:
            return text
    return None


def explain(f: Features, e: Entry) -> tuple[str, str, str]:
    """(title, body, explanation) of ``e`` decided in context ``f``."""
    known = values(f, e)
    title = render(e.title, known) or e.title
    body = render(e.body_template, known) or e.body_template
    explanation = (
        (render(e.explanation_template, known) if e.explanation_template else None)
        or _fact(f, e, known)
        or f"A {e.minutes_needed}-minute {e.category} tip that suits your {f.day_part}."
    )
    return title, body, explanation

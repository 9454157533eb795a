"""The tip catalog: the file format, validation, etags, field masks, the hot-path view. Pure.

The catalog file (``policy/data/tips.v<N>.json``) is the whole catalog at one
version; ``from_file`` turns it into ``CatalogTip`` messages, the form the
admin RPCs and the store use. ``Entry`` is the frozen, pre-digested view a
decision reads (no proto access on the hot path).
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask

from kernel.errors import InvalidArgument
from kernel.timestamps import timedelta_of
from tips.events.v1 import signal_pb2
from tips.recommender.v1 import catalog_tip_pb2

CatalogTip = catalog_tip_pb2.CatalogTip
E = catalog_tip_pb2.TipEffort
D = catalog_tip_pb2.DayPart
K = signal_pb2.SignalKind

ID_RE = re.compile(r"^[a-z][a-z0-9_]{2,62}$")
# Values templates may use; each is filled from the decision context (explain.py).
PLACEHOLDERS = frozenset(
    {
        "free_minutes",
        "next_event_start",
        "steps_today",
        "steps_usual",
        "steps_gap",
        "sleep",
        "mood_score",
        "minutes_needed",
        "local_time",
        "weekday",
        "day_part",
    }
)
EFFORTS = {"low": E.TIP_EFFORT_LOW, "medium": E.TIP_EFFORT_MEDIUM, "high": E.TIP_EFFORT_HIGH}
DAY_PARTS = {
    "morning": D.DAY_PART_MORNING,
    "afternoon": D.DAY_PART_AFTERNOON,
    "evening": D.DAY_PART_EVENING,
    "night": D.DAY_PART_NIGHT,
}
DAY_PART_NAMES = {v: k for k, v in DAY_PARTS.items()}
SIGNALS = {
    "steps": K.SIGNAL_KIND_STEPS,
    "sleep": K.SIGNAL_KIND_SLEEP,
    "calendar_event": K.SIGNAL_KIND_CALENDAR_EVENT,
    "focus_session": K.SIGNAL_KIND_FOCUS_SESSION,
    "workout": K.SIGNAL_KIND_WORKOUT,
    "mood": K.SIGNAL_KIND_MOOD,
}
SIGNAL_NAMES = {v: k for k, v in SIGNALS.items()}
# Profile consent ids (the {consent} of users/{user}/consents/{consent}).
CONSENT_IDS = frozenset(
    {
        "calendar-data-for-tips",
        "fitness-data-for-tips",
        "sleep-data-for-tips",
        "mood-data-for-tips",
        "email-notifications",
        "push-notifications",
        "model-training",
        "product-analytics",
    }
)
# Every writable field, for update masks ("*" means all of them).
WRITABLE = (
    "title",
    "body_template",
    "explanation_template",
    "category",
    "effort",
    "minutes_needed",
    "day_parts",
    "signals_needed",
    "eligibility",
    "enabled",
)
ELIGIBILITY_FIELDS = (
    "cooldown",
    "max_per_day",
    "min_free_block_minutes",
    "required_consent_purposes",
)


def catalog_name(tip_id: str) -> str:
    return f"catalogTips/{tip_id}"


def parse_catalog_name(name: str, field: str = "name") -> str:
    parts = name.split("/")
    if len(parts) != 2 or parts[0] != "catalogTips" or not ID_RE.match(parts[1]):
        raise InvalidArgument([(field, f"must be catalogTips/{{catalog_tip}}, got {name!r}")])
    return parts[1]


# --- the file ---------------------------------------------------------------------------


# The catalog the mesh ships with (64 tips): the recommender seeds it, ml_pipelines
# rebuilds logged candidates' features from it, the lab simulates against it.
DEFAULT_FILE = Path(__file__).parent / "data" / "tips.v1.json"


def from_file(path: str | Path) -> tuple[str, list[catalog_tip_pb2.CatalogTip]]:
    """The catalog version and tips of a catalog file (validated)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    version = str(data["catalog_version"])
    tips = [_tip_from_json(item) for item in data["tips"]]
    validate_catalog(version, tips)
    return version, tips


def _tip_from_json(item: Mapping[str, Any]) -> catalog_tip_pb2.CatalogTip:
    rules = catalog_tip_pb2.EligibilityRules(
        max_per_day=int(item.get("max_per_day", 0)),
        min_free_block_minutes=int(item.get("min_free_block_minutes", 0)),
        required_consent_purposes=list(item.get("required_consents", [])),
    )
    if item.get("cooldown_minutes"):
        rules.cooldown.FromTimedelta(timedelta(minutes=int(item["cooldown_minutes"])))
    return catalog_tip_pb2.CatalogTip(
        name=catalog_name(item["id"]),
        title=item["title"],
        body_template=item["body"],
        explanation_template=item.get("explanation", ""),
        category=item["category"],
        effort=EFFORTS[item["effort"]],
        minutes_needed=int(item["minutes_needed"]),
        day_parts=[DAY_PARTS[p] for p in item.get("day_parts", [])],
        signals_needed=[SIGNALS[s] for s in item.get("signals_needed", [])],
        eligibility=rules,
        enabled=bool(item.get("enabled", True)),
    )


# --- validation -------------------------------------------------------------------------


def placeholders(template: str) -> set[str]:
    """Placeholder names of a ``{name}`` template; ValueError when malformed."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def validate_tip(tip: catalog_tip_pb2.CatalogTip, prefix: str = "catalog_tip") -> None:
    """InvalidArgument naming every bad field of a catalog tip."""
    bad: list[tuple[str, str]] = []
    if not tip.title.strip() or len(tip.title) > 120:
        bad.append((f"{prefix}.title", "required, at most 120 characters"))
    for field in ("body_template", "explanation_template"):
        template = getattr(tip, field)
        if field == "body_template" and not template.strip():
            bad.append((f"{prefix}.{field}", "required"))
            continue
        try:
            unknown = placeholders(template) - PLACEHOLDERS
        except ValueError as exc:
            bad.append((f"{prefix}.{field}", f"malformed template: {exc}"))
            continue
        if unknown:
            names = ", ".join(sorted(unknown))
            bad.append((f"{prefix}.{field}", f"unknown placeholders: {names}"))
    if not re.match(r"^[a-z][a-z0-9_]{1,30}$", tip.category):
        bad.append((f"{prefix}.category", "required, lower snake case"))
    if tip.effort not in EFFORTS.values():
        bad.append((f"{prefix}.effort", "must be LOW, MEDIUM or HIGH"))
    if not 1 <= tip.minutes_needed <= 24 * 60:
        bad.append((f"{prefix}.minutes_needed", "must be between 1 and 1440"))
    if any(p not in DAY_PART_NAMES for p in tip.day_parts):
        bad.append((f"{prefix}.day_parts", "unknown day part"))
    if any(s not in SIGNAL_NAMES for s in tip.signals_needed):
        bad.append((f"{prefix}.signals_needed", "unknown or unusable signal kind"))
    rules = tip.eligibility
    cooldown = timedelta_of(rules, "cooldown", f"{prefix}.eligibility.cooldown")
    if cooldown is not None and cooldown < timedelta(0):
        bad.append((f"{prefix}.eligibility.cooldown", "must not be negative"))
    if rules.max_per_day < 0:
        bad.append((f"{prefix}.eligibility.max_per_day", "must not be negative"))
    if not 0 <= rules.min_free_block_minutes <= 24 * 60:
        bad.append((f"{prefix}.eligibility.min_free_block_minutes", "must be 0 to 1440"))
    unknown_consents = set(rules.required_consent_purposes) - CONSENT_IDS
    if unknown_consents:
        bad.append(
            (
                f"{prefix}.eligibility.required_consent_purposes",
                f"unknown consent ids: {', '.join(sorted(unknown_consents))}",
            )
        )
    if bad:
        raise InvalidArgument(bad)


def validate_catalog(version: str, tips: Sequence[catalog_tip_pb2.CatalogTip]) -> None:
    if not re.match(r"^[A-Za-z0-9._+-]{1,64}$", version):
        raise InvalidArgument([("catalog_version", "1 to 64 letters, digits, . _ + -")])
    if not tips:
        raise InvalidArgument([("catalog_tips", "a catalog needs at least one tip")])
    seen: set[str] = set()
    for i, tip in enumerate(tips):
        tip_id = parse_catalog_name(tip.name, f"catalog_tips[{i}].name")
        if tip_id in seen:
            raise InvalidArgument([(f"catalog_tips[{i}].name", f"duplicate id {tip_id!r}")])
        seen.add(tip_id)
        validate_tip(tip, f"catalog_tips[{i}]")


# --- content, etags, masks ------------------------------------------------------------


def content(tip: catalog_tip_pb2.CatalogTip) -> catalog_tip_pb2.CatalogTip:
    """Only the author-written fields (what an import compares and an etag hashes)."""
    out = catalog_tip_pb2.CatalogTip(name=tip.name)
    for field in WRITABLE:
        if field == "eligibility":
            out.eligibility.CopyFrom(tip.eligibility)
        elif field in ("day_parts", "signals_needed"):
            getattr(out, field).extend(getattr(tip, field))
        else:
            setattr(out, field, getattr(tip, field))
    return out


def content_hash(tip: catalog_tip_pb2.CatalogTip) -> str:
    data = content(tip).SerializeToString(deterministic=True)
    return hashlib.sha256(data).hexdigest()[:16]


def catalog_hash(tips: Iterable[catalog_tip_pb2.CatalogTip]) -> str:
    digest = hashlib.sha256()
    for tip in sorted(tips, key=lambda t: t.name):
        digest.update(content(tip).SerializeToString(deterministic=True))
    return digest.hexdigest()


def apply_mask(
    stored: catalog_tip_pb2.CatalogTip, patch: catalog_tip_pb2.CatalogTip, mask: FieldMask
) -> catalog_tip_pb2.CatalogTip:
    """``stored`` with the fields ``mask`` names taken from ``patch``."""
    if not mask.paths:
        raise InvalidArgument([("update_mask", "required: name the fields to change, or '*'")])
    paths = list(WRITABLE) if list(mask.paths) == ["*"] else list(mask.paths)
    out = catalog_tip_pb2.CatalogTip()
    out.CopyFrom(stored)
    for path in paths:
        head, _, rest = path.partition(".")
        nested_ok = head == "eligibility" and rest in ELIGIBILITY_FIELDS
        if head not in WRITABLE or (rest and not nested_ok):
            raise InvalidArgument([("update_mask", f"{path!r} is not a writable field")])
        if head == "eligibility" and rest:
            if rest == "required_consent_purposes":
                del out.eligibility.required_consent_purposes[:]
                out.eligibility.required_consent_purposes.extend(
                    patch.eligibility.required_consent_purposes
                )
            elif rest == "cooldown":
                out.eligibility.cooldown.CopyFrom(patch.eligibility.cooldown)
                if not patch.eligibility.HasField("cooldown"):
                    out.eligibility.ClearField("cooldown")
            else:
                setattr(out.eligibility, rest, getattr(patch.eligibility, rest))
        elif head == "eligibility":
            out.eligibility.CopyFrom(patch.eligibility)
        elif head in ("day_parts", "signals_needed"):
            del getattr(out, head)[:]
            getattr(out, head).extend(getattr(patch, head))
        else:
            setattr(out, head, getattr(patch, head))
    return out


# --- the hot-path view -------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One enabled catalog tip as a decision reads it."""

    id: str
    title: str
    body_template: str
    explanation_template: str
    category: str
    effort: int
    minutes_needed: int
    day_parts: frozenset[str]
    signals_needed: frozenset[int]
    cooldown: timedelta | None
    max_per_day: int
    min_free_block_minutes: int
    required_consents: frozenset[str]

    @property
    def name(self) -> str:
        return catalog_name(self.id)


def entry(tip: catalog_tip_pb2.CatalogTip) -> Entry:
    rules = tip.eligibility
    cooldown = timedelta_of(rules, "cooldown", "eligibility.cooldown")
    return Entry(
        id=tip.name.removeprefix("catalogTips/"),
        title=tip.title,
        body_template=tip.body_template,
        explanation_template=tip.explanation_template,
        category=tip.category,
        effort=int(tip.effort),
        minutes_needed=tip.minutes_needed,
        day_parts=frozenset(DAY_PART_NAMES[p] for p in tip.day_parts if p in DAY_PART_NAMES),
        signals_needed=frozenset(int(s) for s in tip.signals_needed),
        cooldown=cooldown if cooldown and cooldown > timedelta(0) else None,
        max_per_day=rules.max_per_day,
        min_free_block_minutes=rules.min_free_block_minutes,
        required_consents=frozenset(rules.required_consent_purposes),
    )


def duration(minutes: int) -> Duration:
    value = Duration()
    value.FromTimedelta(timedelta(minutes=minutes))
    return value

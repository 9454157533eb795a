"""Pure profile logic: defaults, validation naming the field path, FieldMask updates, etags.

Everything here is I/O free so it is unit tested directly. Field paths in
errors are rooted at the request field (``profile.quiet_hours[1].end_time_of_day``).
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
import zoneinfo
from collections.abc import Iterable

from google.protobuf import field_mask_pb2
from google.type import dayofweek_pb2, timeofday_pb2

from kernel.errors import InvalidArgument
from tips.profile.v1 import profile_pb2

DEFAULT_TIME_ZONE = "UTC"
DEFAULT_LANGUAGE = "en"
DISPLAY_NAME_MAX = 100
MAX_QUIET_WINDOWS = 21
MAX_CATEGORIES = 20
DAILY_CAP_MAX = 50
CATEGORY_ID = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
# BCP-47 in the shape apps send: a 2-3 letter language and optional subtags.
LANGUAGE_CODE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}$")

# Paths a client may name in update_mask (AIP-134). Output-only fields are
# accepted and ignored (AIP-203); anything else is rejected.
UPDATABLE: tuple[str, ...] = (
    "display_name",
    "time_zone",
    "language_code",
    "quiet_hours",
    "preferred_categories",
    "muted_categories",
    "channels",
    "daily_tip_cap",
    "digest",
)
_SUBPATHS = (
    "channels.push_enabled",
    "channels.email_enabled",
    "digest.enabled",
    "digest.delivery_time",
)
IGNORED: frozenset[str] = frozenset({"name", "email", "create_time", "update_time", "etag"})

Violations = list[tuple[str, str]]
SECONDS_PER_DAY = 24 * 3600
SECONDS_PER_WEEK = 7 * SECONDS_PER_DAY


@functools.cache
def _zones() -> frozenset[str]:
    # Read once: a scan of the tz database, and a membership test is safer than
    # letting ZoneInfo resolve arbitrary paths.
    return frozenset(zoneinfo.available_timezones())


def default_profile(name: str) -> profile_pb2.Profile:
    """A new user's profile before they set anything."""
    return profile_pb2.Profile(
        name=name, time_zone=DEFAULT_TIME_ZONE, language_code=DEFAULT_LANGUAGE
    )


def etag_of(profile: profile_pb2.Profile) -> str:
    """Checksum of everything but the etag itself (update_time included)."""
    copy = profile_pb2.Profile()
    copy.CopyFrom(profile)
    copy.ClearField("etag")
    digest = hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()
    return f'"{digest[:20]}"'


# --- validation -------------------------------------------------------------------------


def check_display_name(value: str, path: str) -> Violations:
    if len(value) > DISPLAY_NAME_MAX:
        return [(path, f"must be at most {DISPLAY_NAME_MAX} characters, got {len(value)}")]
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in value):
        return [(path, "must not contain control or format characters")]
    if value and value.strip() != value:
        return [(path, "must not start or end with whitespace")]
    return []


def check_time_zone(value: str, path: str) -> Violations:
    if value and value not in _zones():
        return [(path, f"must be an IANA time zone such as Europe/Madrid, got {value!r}")]
    return []


def check_language_code(value: str, path: str) -> Violations:
    if value and not LANGUAGE_CODE.match(value):
        return [(path, f"must be a BCP-47 language code such as en or es-ES, got {value!r}")]
    return []


def check_daily_cap(value: int, path: str) -> Violations:
    if not 0 <= value <= DAILY_CAP_MAX:
        return [(path, f"must be between 1 and {DAILY_CAP_MAX} (0: the default), got {value}")]
    return []


def check_digest(profile: profile_pb2.Profile, path: str) -> Violations:
    """A delivery time of day when set, and one is needed to turn the digest on."""
    digest = profile.digest
    if digest.HasField("delivery_time"):
        return _check_time(digest.delivery_time, f"{path}.delivery_time", end=False)
    if digest.enabled:
        return [(f"{path}.delivery_time", "is required when the digest is enabled")]
    return []


def check_categories(values: Iterable[str], path: str) -> Violations:
    items = list(values)
    out: Violations = []
    if len(items) > MAX_CATEGORIES:
        out.append((path, f"at most {MAX_CATEGORIES} categories, got {len(items)}"))
    seen: set[str] = set()
    for i, item in enumerate(items):
        if not CATEGORY_ID.match(item):
            out.append((f"{path}[{i}]", f"must be a category id like 'movement', got {item!r}"))
        elif item in seen:
            out.append((f"{path}[{i}]", f"{item!r} is listed twice"))
        seen.add(item)
    return out


def _seconds(t: timeofday_pb2.TimeOfDay) -> int:
    return int(t.hours * 3600 + t.minutes * 60 + t.seconds)


def _check_time(t: timeofday_pb2.TimeOfDay, path: str, *, end: bool) -> Violations:
    if t.hours == 24 and end and t.minutes == t.seconds == t.nanos == 0:
        return []  # 24:00 closes a window at the end of its day
    ok = 0 <= t.hours <= 23 and 0 <= t.minutes <= 59 and 0 <= t.seconds <= 59 and t.nanos == 0
    if not ok:
        limit = "24:00" if end else "23:59:59"
        return [(path, f"must be a time of day between 00:00 and {limit} in whole seconds")]
    return []


def window_span(window: profile_pb2.QuietHoursWindow) -> tuple[int, int]:
    """[start, end) in seconds from Monday 00:00; end may pass the week's end (wraps)."""
    day = window.day_of_week - dayofweek_pb2.MONDAY
    start = day * SECONDS_PER_DAY + _seconds(window.start_time_of_day)
    length = _seconds(window.end_time_of_day) - _seconds(window.start_time_of_day)
    if length <= 0:
        length += SECONDS_PER_DAY  # runs past midnight into the next day
    return start, start + length


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    # Compare on the weekly circle: shift b by a week either way.
    return any(
        a[0] < b[1] + shift and b[0] + shift < a[1]
        for shift in (-SECONDS_PER_WEEK, 0, SECONDS_PER_WEEK)
    )


def check_quiet_hours(windows: Iterable[profile_pb2.QuietHoursWindow], path: str) -> Violations:
    """Each window well formed; no two overlap (rejected, not merged: the
    client shows what it sent, so silent merging would surprise it)."""
    items = list(windows)
    if len(items) > MAX_QUIET_WINDOWS:
        return [(path, f"at most {MAX_QUIET_WINDOWS} windows, got {len(items)}")]
    out: Violations = []
    spans: list[tuple[int, tuple[int, int]]] = []
    for i, w in enumerate(items):
        at = f"{path}[{i}]"
        bad: Violations = []
        if not dayofweek_pb2.MONDAY <= w.day_of_week <= dayofweek_pb2.SUNDAY:
            bad.append((f"{at}.day_of_week", "must be a day, MONDAY to SUNDAY"))
        if not w.HasField("start_time_of_day"):
            bad.append((f"{at}.start_time_of_day", "is required"))
        else:
            bad += _check_time(w.start_time_of_day, f"{at}.start_time_of_day", end=False)
        if not w.HasField("end_time_of_day"):
            bad.append((f"{at}.end_time_of_day", "is required"))
        else:
            bad += _check_time(w.end_time_of_day, f"{at}.end_time_of_day", end=True)
        if not bad and _seconds(w.start_time_of_day) == _seconds(w.end_time_of_day):
            bad.append(
                (
                    f"{at}.end_time_of_day",
                    "must differ from start_time_of_day (00:00-24:00 is a whole day)",
                )
            )
        out += bad
        if bad:
            continue
        span = window_span(w)
        for j, other in spans:
            if _overlap(other, span):
                out.append((at, f"overlaps {path}[{j}]"))
                break
        spans.append((i, span))
    return out


def validate(profile: profile_pb2.Profile, paths: Iterable[str], root: str = "profile") -> None:
    """Check the fields in ``paths`` of ``profile`` (the result of an update)."""
    fields = {p.split(".")[0] for p in paths}
    v: Violations = []
    if "display_name" in fields:
        v += check_display_name(profile.display_name, f"{root}.display_name")
    if "time_zone" in fields:
        v += check_time_zone(profile.time_zone, f"{root}.time_zone")
    if "language_code" in fields:
        v += check_language_code(profile.language_code, f"{root}.language_code")
    if "quiet_hours" in fields:
        v += check_quiet_hours(profile.quiet_hours, f"{root}.quiet_hours")
    if "preferred_categories" in fields:
        v += check_categories(profile.preferred_categories, f"{root}.preferred_categories")
    if "muted_categories" in fields:
        v += check_categories(profile.muted_categories, f"{root}.muted_categories")
    if "daily_tip_cap" in fields:
        v += check_daily_cap(profile.daily_tip_cap, f"{root}.daily_tip_cap")
    if "digest" in fields:
        v += check_digest(profile, f"{root}.digest")
    if fields & {"preferred_categories", "muted_categories"}:
        muted = set(profile.muted_categories)
        # Name the list the caller changed (preferred when both changed).
        changed = "preferred_categories" if "preferred_categories" in fields else None
        for i, item in enumerate(profile.preferred_categories):
            if item in muted:
                if changed:
                    at = f"{root}.preferred_categories[{i}]"
                else:
                    at = f"{root}.muted_categories[{list(profile.muted_categories).index(item)}]"
                v.append((at, f"{item!r} cannot be both preferred and muted"))
    if v:
        raise InvalidArgument(v)


# --- updates (AIP-134) ---------------------------------------------------------------------


def _set_paths(patch: profile_pb2.Profile) -> list[str]:
    """Without a mask: the updatable fields the request set (non-default values)."""
    paths = [f.name for f, _ in patch.ListFields() if f.name in UPDATABLE]
    return paths


def mask_paths(mask: field_mask_pb2.FieldMask | None, patch: profile_pb2.Profile) -> list[str]:
    """The updatable paths an update touches; InvalidArgument for unknown paths."""
    if mask is None or not mask.paths:
        return _set_paths(patch)
    paths: list[str] = []
    bad: Violations = []
    for i, path in enumerate(mask.paths):
        if path == "*":
            if len(mask.paths) > 1:
                bad.append(("update_mask", "'*' must be the only path"))
            paths.extend(UPDATABLE)
        elif path in UPDATABLE or path in _SUBPATHS:
            paths.append(path)
        elif path in IGNORED:
            continue  # output-only or identifier: ignored (AIP-203)
        else:
            known = ", ".join((*UPDATABLE, *_SUBPATHS))
            bad.append((f"update_mask.paths[{i}]", f"unknown field {path!r}; one of: {known}"))
    if bad:
        raise InvalidArgument(bad)
    return list(dict.fromkeys(paths))


def apply_update(
    current: profile_pb2.Profile, patch: profile_pb2.Profile, paths: Iterable[str]
) -> profile_pb2.Profile:
    """``current`` with each path copied from ``patch`` (empty resets to the default)."""
    result = profile_pb2.Profile()
    result.CopyFrom(current)
    for path in paths:
        if path == "channels.push_enabled":
            result.channels.push_enabled = patch.channels.push_enabled
        elif path == "channels.email_enabled":
            result.channels.email_enabled = patch.channels.email_enabled
        elif path in ("quiet_hours", "preferred_categories", "muted_categories"):
            target = getattr(result, path)
            del target[:]
            target.extend(getattr(patch, path))
        elif path == "channels":
            result.channels.CopyFrom(patch.channels)
        elif path.startswith("digest"):
            _apply_digest(result, patch, path)
        else:
            setattr(result, path, getattr(patch, path))
    if not result.time_zone:
        result.time_zone = DEFAULT_TIME_ZONE
    if not result.language_code:
        result.language_code = DEFAULT_LANGUAGE
    return result


def _apply_digest(result: profile_pb2.Profile, patch: profile_pb2.Profile, path: str) -> None:
    # Unset stays unset ("no digest"), so an empty patch clears rather than sets an empty one.
    if path == "digest.enabled":
        result.digest.enabled = patch.digest.enabled
    elif path == "digest.delivery_time" and patch.digest.HasField("delivery_time"):
        result.digest.delivery_time.CopyFrom(patch.digest.delivery_time)
    elif path == "digest.delivery_time":
        result.digest.ClearField("delivery_time")
    elif patch.HasField("digest"):
        result.digest.CopyFrom(patch.digest)
    else:
        result.ClearField("digest")


def changed_fields(before: profile_pb2.Profile, after: profile_pb2.Profile) -> list[str]:
    """Top-level updatable fields whose values differ."""
    return [f for f in UPDATABLE if _value(before, f) != _value(after, f)]


def _value(profile: profile_pb2.Profile, field: str) -> object:
    value = getattr(profile, field)
    if field in ("quiet_hours", "preferred_categories", "muted_categories"):
        return [
            v.SerializeToString(deterministic=True) if field == "quiet_hours" else v for v in value
        ]
    if field == "channels":
        return (value.push_enabled, value.email_enabled)
    if field == "digest":
        return value.SerializeToString(deterministic=True)
    return value


def set_fields(profile: profile_pb2.Profile) -> list[str]:
    """Every field set in ``profile`` (the `changed_fields` of a creation)."""
    return [f.name for f, _ in profile.ListFields() if f.name != "etag"]

"""What the Fitbit connectors share: endpoints, the user's zone, local times, log lists.

Not a connector itself (no ``CONNECTOR``): ``fitbit`` (sleep) and
``fitbit_activity`` (steps, active minutes, workouts) are two connectors,
one consent purpose each, on the same documented Fitbit Web API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.integrations.connectors.base import Cursor, Endpoints, MalformedRecord
from services.integrations.connectors.http import Gone

ENDPOINTS = Endpoints(
    authorize_url="https://www.fitbit.com/oauth2/authorize",
    token_url="https://api.fitbit.com/oauth2/token",
    api_base_url="https://api.fitbit.com/",
    revoke_url="https://api.fitbit.com/oauth2/revoke",
)
PROFILE_PATH = "1/user/-/profile.json"
MAX_LIMIT = 100  # the log lists' maximum page size


def user_zone(profile: object) -> tzinfo:
    """The profile's IANA ``timezone`` (DST-correct per day), else its current offset."""
    user = profile.get("user") if isinstance(profile, Mapping) else None
    if not isinstance(user, Mapping):
        return UTC
    name = user.get("timezone")
    if isinstance(name, str) and name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    millis = user.get("offsetFromUTCMillis")
    if isinstance(millis, int | float) and not isinstance(millis, bool):
        offset = timedelta(milliseconds=millis)
        if abs(offset) < timedelta(hours=24):
            return timezone(offset)
    return UTC


async def zone_of(api: Any) -> tzinfo:
    """The user's zone, from ``GET /1/user/-/profile.json``."""
    return user_zone(await api.get_json(PROFILE_PATH))


def local_midnight(day: date, zone: tzinfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=zone)


def local_time(value: object, zone: tzinfo, what: str) -> datetime:
    """A Fitbit time; one without an offset is the user's local time."""
    if not isinstance(value, str) or not value:
        raise MalformedRecord(f"{what} is missing")
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise MalformedRecord(f"{what} is not a time") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=zone)


def day_of(value: object) -> date | None:
    """The date of a ``YYYY-MM-DD...`` value, None when it has none."""
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        return None


async def after_date_pages(
    api: Any, path: str, items: str, cursor: Cursor, after: date, page_size: int
) -> AsyncIterator[tuple[list[Any], str | None]]:
    """The pages of a log list from ``after`` on, as (records, next link).

    Documented as ``GET <path>?afterDate=YYYY-MM-DD&sort=asc&limit=N&offset=0``,
    followed by ``pagination.next`` until it is empty. A half-done pagination
    resumes from the cursor's ``next``; a stale link (410) lists again from
    ``after``.
    """
    link: str | None = cursor.get("next")
    while True:
        if link:
            try:
                body = await api.get_json(link)
            except Gone:
                link = None
                continue
        else:
            params = {
                "afterDate": after.isoformat(),
                "sort": "asc",
                "limit": min(page_size, MAX_LIMIT),
                "offset": 0,
            }
            body = await api.get_json(path, params)
        records = body.get(items) if isinstance(body, Mapping) else None
        pagination = body.get("pagination") if isinstance(body, Mapping) else None
        link = pagination.get("next") if isinstance(pagination, Mapping) else None
        yield (records if isinstance(records, list) else []), link or None
        if not link:
            return

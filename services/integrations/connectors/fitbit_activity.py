"""Fitbit activity: workouts as WORKOUT signals, daily steps and active minutes as STEPS.

APIs (all documented Fitbit Web API, scopes ``activity`` and ``profile``):

- ``GET /1/user/-/profile.json``: ``timezone`` (IANA) and ``offsetFromUTCMillis``;
  the user's local days and offset-less times are read in that zone;
- ``GET /1/user/-/activities/steps/date/{start}/{end}.json`` and the
  ``minutesFairlyActive`` / ``minutesVeryActive`` series (same shape): one
  value per local day;
- ``GET /1/user/-/activities/list.json?afterDate=YYYY-MM-DD&sort=asc&limit=N&offset=0``
  (Get Activity Log List), following ``pagination.next``.

Daily totals grow during the day, so they are sent as increases over what
was already sent (``daily_totals``): the cursor's ``days`` ledger remembers
the totals sent per recent local day, a run re-reads the last ``WINDOW`` days
(from the last run's day on, so a pause leaves no gap) and emits one STEPS
signal per day that grew, over that local day, with a client_signal_id
naming the day and its new totals (``fitbit:steps:{day}:{steps}:{minutes}``).

Workouts: the cursor's ``after_date`` moves to the day before the newest
workout seen (a workout logged late is read again; its duplicate is dropped),
``next`` resumes a half-done pagination. client_signal_id
``fitbit:workout:{logId}:{lastModified}``: one signal per record version.

The first page of a run carries the day increases with the first workouts
page, so a per-run page cap never starves either.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from datetime import date, datetime, timedelta, tzinfo
from typing import Any

from kernel.timestamps import timestamp
from services.integrations.connectors.base import (
    Connector,
    Cursor,
    FetchContext,
    MalformedRecord,
    Page,
)
from services.integrations.connectors.common import client_id
from services.integrations.connectors.daily_totals import (
    Increase,
    Totals,
    ledger_from_json,
    ledger_to_json,
    reconcile,
)
from services.integrations.connectors.fitbit_api import (
    ENDPOINTS,
    after_date_pages,
    day_of,
    local_midnight,
    local_time,
    zone_of,
)
from tips.events.v1 import signal_pb2

log = logging.getLogger(__name__)

LIST_PATH = "1/user/-/activities/list.json"
SERIES_PATH = "1/user/-/activities/{resource}/date/{start}/{end}.json"
STEPS, FAIRLY, VERY = "steps", "minutesFairlyActive", "minutesVeryActive"
WINDOW = 7  # recent local days re-read each run: trackers sync late
MAX_STEPS = 200_000  # the events service's bound per item
MAX_MINUTES = 1440
MAX_WORKOUT_MS = 24 * 3600 * 1000
METRES = {"kilometer": 1000.0, "mile": 1609.344}


# --- normalisers ---------------------------------------------------------------------


def _number(value: object, what: str, top: float) -> float:
    if value is None:
        return 0.0
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= top:
        raise MalformedRecord(f"{what} is not a number between 0 and {top:g}")
    return float(value)


def normalise_workout(activity: object, connection: str, zone: tzinfo) -> signal_pb2.Signal:
    """One activity log as a WORKOUT signal; MalformedRecord when it cannot be one."""
    if not isinstance(activity, Mapping):
        raise MalformedRecord("activity is not an object")
    log_id = activity.get("logId")
    if not isinstance(log_id, int) or isinstance(log_id, bool):
        raise MalformedRecord("activity has no logId")
    name = activity.get("activityName")
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > 64:
        raise MalformedRecord("activityName is missing or longer than 64 characters")
    start = local_time(activity.get("startTime"), zone, "startTime")
    millis = activity.get("duration", activity.get("activeDuration"))
    if millis is None:
        raise MalformedRecord("activity has neither duration nor activeDuration")
    duration = timedelta(milliseconds=_number(millis, "duration", MAX_WORKOUT_MS))
    distance = _number(activity.get("distance"), "distance", 1_000_000)
    unit = str(activity.get("distanceUnit", "")).lower()
    if distance and unit not in METRES:
        raise MalformedRecord("distanceUnit is neither Kilometer nor Mile")
    metres = distance * METRES.get(unit, 0.0)
    if metres > 1_000_000:
        raise MalformedRecord("distance is more than 1000 km")
    version = activity.get("lastModified")
    return signal_pb2.Signal(
        client_signal_id=client_id(
            "fitbit", "workout", str(log_id), str(version) if version else "v"
        ),
        kind=signal_pb2.SIGNAL_KIND_WORKOUT,
        source=signal_pb2.SIGNAL_SOURCE_CONNECTOR,
        connection=connection,
        start_time=timestamp(start),
        end_time=timestamp(start + duration),
        workout=signal_pb2.WorkoutPayload(
            activity=name.strip().lower(),
            kilocalories=_number(activity.get("calories"), "calories", 20_000),
            distance_meters=metres,
        ),
    )


def series(body: object, resource: str) -> tuple[dict[date, int], set[date], int]:
    """``{"activities-<resource>": [{"dateTime", "value"}]}`` as (values, bad days, undated)."""
    values: dict[date, int] = {}
    bad: set[date] = set()
    undated = 0
    items = body.get(f"activities-{resource}") if isinstance(body, Mapping) else None
    for item in items if isinstance(items, list) else []:
        try:
            day = date.fromisoformat(str(item.get("dateTime")) if isinstance(item, Mapping) else "")
        except ValueError:
            undated += 1
            continue
        try:
            # Fitbit sends the numbers as strings ("8123").
            value = int(str(item.get("value")))
        except ValueError:
            value = -1
        if value < 0:
            bad.add(day)
        else:
            values[day] = value
    return values, bad, undated


def steps_signal(
    increase: Increase, zone: tzinfo, now: datetime, connection: str
) -> signal_pb2.Signal:
    """A day's increase, over that local day (up to ``now`` for today)."""
    start = local_midnight(increase.day, zone)
    end = min(local_midnight(increase.day + timedelta(days=1), zone), now)
    sent = increase.sent
    return signal_pb2.Signal(
        client_signal_id=client_id(
            "fitbit", "steps", increase.day.isoformat(), str(sent.steps), str(sent.active_minutes)
        ),
        kind=signal_pb2.SIGNAL_KIND_STEPS,
        source=signal_pb2.SIGNAL_SOURCE_CONNECTOR,
        connection=connection,
        start_time=timestamp(start),
        end_time=timestamp(max(start, end)),
        steps=signal_pb2.StepsPayload(count=increase.steps, active_minutes=increase.active_minutes),
    )


# --- the connector -------------------------------------------------------------------


class FitbitActivity(Connector):
    id = "fitbit_activity"
    display_name = "Fitbit activity"
    description = (
        "Uses your steps, active minutes and workouts to suggest moving at the right time."
    )
    signal_kinds = (signal_pb2.SIGNAL_KIND_STEPS, signal_pb2.SIGNAL_KIND_WORKOUT)
    consent_purpose = "fitness-data-for-tips"
    scopes = ("activity", "profile")
    endpoints = ENDPOINTS
    # Steps today feed the tips; Fitbit allows 150 requests per user and hour,
    # a run makes 5 or more (profile, three series, the list's pages).
    default_sync_interval = timedelta(minutes=30)
    min_sync_interval = timedelta(minutes=15)

    def resync_cursor(self, cursor: Cursor) -> Cursor:
        # What was already sent stays known, or a resync would send days twice.
        return {k: cursor[k] for k in ("days", "corrections") if k in cursor}

    async def fetch(self, api: Any, cursor: Cursor, ctx: FetchContext) -> AsyncIterator[Page]:
        zone = await zone_of(api)
        today = ctx.now.astimezone(zone).date()
        oldest = (ctx.now - ctx.backfill).astimezone(zone).date()
        page, state = await self._days(api, cursor, ctx, zone, today, oldest)
        after = day_of(cursor.get("after_date")) or oldest
        newest = after
        pages = after_date_pages(api, LIST_PATH, "activities", cursor, after, ctx.page_size)
        async for logs, link in pages:
            for activity in logs:
                page.records += 1
                try:
                    page.signals.append(normalise_workout(activity, ctx.connection, zone))
                except MalformedRecord:
                    page.skipped += 1
                    continue
                day = day_of(activity.get("startTime"))
                if day is not None and day > newest:
                    newest = day
            # Overlap one day: an activity logged late for yesterday is read again.
            page.cursor = {
                **state,
                "after_date": max(after, newest - timedelta(days=1)).isoformat(),
            }
            if link:
                page.cursor["next"] = link
            yield page
            page = Page()

    async def _days(
        self,
        api: Any,
        cursor: Cursor,
        ctx: FetchContext,
        zone: tzinfo,
        today: date,
        oldest: date,
    ) -> tuple[Page, Cursor]:
        """The page of day increases, and the cursor part recording what was sent."""
        last = day_of(cursor.get("today"))
        # From the last run's window on (a pause leaves no gap), within the backfill.
        start = (
            oldest if last is None else max(oldest, min(today, last) - timedelta(days=WINDOW - 1))
        )
        read: dict[str, tuple[dict[date, int], set[date], int]] = {}
        for resource in (STEPS, FAIRLY, VERY):
            path = SERIES_PATH.format(resource=resource, start=start, end=today)
            read[resource] = series(await api.get_json(path), resource)
        page = Page()
        seen: dict[date, Totals] = {}
        steps, bad, undated = read[STEPS]
        (fairly, bad_fairly, _), (very, bad_very, _) = read[FAIRLY], read[VERY]
        page.records, page.skipped = len(steps) + len(bad) + undated, len(bad) + undated
        for day, count in steps.items():
            if not start <= day <= today:
                continue
            minutes = fairly.get(day, 0) + very.get(day, 0)
            unusable = day in bad_fairly or day in bad_very
            if unusable or count > MAX_STEPS or minutes > MAX_MINUTES:
                page.skipped += 1  # kept out of the ledger: read again next run
                continue
            seen[day] = Totals(count, minutes)
        sent = ledger_from_json(cursor.get("days"))
        result = reconcile(sent, seen, keep_from=today - timedelta(days=WINDOW - 1))
        page.signals = [steps_signal(i, zone, ctx.now, ctx.connection) for i in result.increases]
        before = cursor.get("corrections")
        corrections = (before if isinstance(before, int) else 0) + len(result.corrections)
        if result.corrections:
            log.info(
                "provider lowered daily totals already sent; the decrease is not emitted",
                extra={
                    "connection": ctx.connection,
                    "days": [d.isoformat() for d in result.corrections],
                },
            )
        state: Cursor = {"days": ledger_to_json(result.ledger), "today": today.isoformat()}
        if corrections:
            state["corrections"] = corrections
        return page, state


CONNECTOR = FitbitActivity()

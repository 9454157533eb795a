"""Fitbit: sleep logs as SLEEP signals.

API: ``GET /1.2/user/-/sleep/list.json?afterDate=YYYY-MM-DD&sort=asc&limit=N&offset=0``
(Get Sleep Log List), following ``pagination.next`` until it is empty. Sleep
times are the user's local time without an offset, so the run first reads
the user's zone (``timezone``, else ``offsetFromUTCMillis``) from
``GET /1/user/-/profile.json`` (``fitbit_api``).

The cursor is a time window's start: ``after_date``, moved to the day before
the newest sleep seen, so a log finished or edited late is fetched again
(its duplicate is dropped by the events service). A half-done pagination
resumes from the stored ``next`` link. client_signal_id: ``fitbit:sleep:{logId}``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import timedelta, tzinfo
from typing import Any

from kernel.timestamps import timestamp
from services.integrations.connectors import fitbit_api
from services.integrations.connectors.base import (
    Connector,
    Cursor,
    FetchContext,
    MalformedRecord,
    Page,
)
from services.integrations.connectors.common import client_id
from tips.events.v1 import signal_pb2

SLEEP_PATH = "1.2/user/-/sleep/list.json"


def normalise(log: object, connection: str, zone: tzinfo) -> signal_pb2.Signal:
    """One sleep log as a signal; MalformedRecord when it cannot be one."""
    if not isinstance(log, Mapping):
        raise MalformedRecord("sleep log is not an object")
    log_id = log.get("logId")
    if not isinstance(log_id, int) or isinstance(log_id, bool):
        raise MalformedRecord("sleep log has no logId")
    start = fitbit_api.local_time(log.get("startTime"), zone, "startTime")
    end = fitbit_api.local_time(log.get("endTime"), zone, "endTime")
    asleep = log.get("minutesAsleep")
    if not isinstance(asleep, int) or isinstance(asleep, bool) or not 0 <= asleep <= 1440:
        raise MalformedRecord("minutesAsleep is not a number of minutes")
    if end < start:
        raise MalformedRecord("endTime is before startTime")
    return signal_pb2.Signal(
        client_signal_id=client_id("fitbit", "sleep", str(log_id)),
        kind=signal_pb2.SIGNAL_KIND_SLEEP,
        source=signal_pb2.SIGNAL_SOURCE_CONNECTOR,
        connection=connection,
        start_time=timestamp(start),
        end_time=timestamp(end),
        # Fitbit's list gives no sleep score (efficiency is another measure).
        sleep=signal_pb2.SleepPayload(asleep_minutes=asleep),
    )


class Fitbit(Connector):
    id = "fitbit"
    display_name = "Fitbit"
    description = "Uses how you slept to pace the day's tips."
    signal_kinds = (signal_pb2.SIGNAL_KIND_SLEEP,)
    consent_purpose = "sleep-data-for-tips"
    scopes = ("sleep", "profile")
    endpoints = fitbit_api.ENDPOINTS
    default_sync_interval = timedelta(hours=1)
    min_sync_interval = timedelta(minutes=15)

    async def fetch(self, api: Any, cursor: Cursor, ctx: FetchContext) -> AsyncIterator[Page]:
        zone = await fitbit_api.zone_of(api)
        after = fitbit_api.day_of(cursor.get("after_date")) or (ctx.now - ctx.backfill).date()
        newest = after
        pages = fitbit_api.after_date_pages(api, SLEEP_PATH, "sleep", cursor, after, ctx.page_size)
        async for logs, link in pages:
            page = Page()
            for log in logs:
                page.records += 1
                try:
                    page.signals.append(normalise(log, ctx.connection, zone))
                except MalformedRecord:
                    page.skipped += 1
                    continue
                day = (
                    fitbit_api.day_of(log.get("dateOfSleep")) if isinstance(log, Mapping) else None
                )
                if day is not None and day > newest:
                    newest = day
            # Overlap one day: a sleep still being written today is fetched again later.
            page.cursor = {"after_date": max(after, newest - timedelta(days=1)).isoformat()}
            if link:
                page.cursor["next"] = link
            yield page


CONNECTOR = Fitbit()

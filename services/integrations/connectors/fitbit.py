"""Fitbit: sleep logs as SLEEP signals.

API: ``GET /1.2/user/-/sleep/list.json?afterDate=YYYY-MM-DD&sort=asc&limit=N&offset=0``
(Get Sleep Log List), following ``pagination.next`` until it is empty. Sleep
times are the user's local time without an offset, so the run first reads
``offsetFromUTCMillis`` from ``GET /1/user/-/profile.json``.

The cursor is a time window's start: ``after_date``, moved to the day before
the newest sleep seen, so a log finished or edited late is fetched again
(its duplicate is dropped by the events service). A half-done pagination
resumes from the stored ``next`` link. client_signal_id: ``fitbit:sleep:{logId}``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from kernel.timestamps import timestamp
from services.integrations.connectors.base import (
    Connector,
    Cursor,
    Endpoints,
    FetchContext,
    MalformedRecord,
    Page,
)
from services.integrations.connectors.common import client_id
from tips.events.v1 import signal_pb2

SLEEP_PATH = "1.2/user/-/sleep/list.json"
PROFILE_PATH = "1/user/-/profile.json"
MAX_LIMIT = 100  # the API's maximum page size


def _local_time(value: object, offset: timedelta, what: str) -> datetime:
    if not isinstance(value, str):
        raise MalformedRecord(f"{what} is missing")
    try:
        local = datetime.fromisoformat(value)
    except ValueError:
        raise MalformedRecord(f"{what} is not a time") from None
    if local.tzinfo is not None:
        return local
    return (local - offset).replace(tzinfo=UTC)


def normalise(log: object, connection: str, offset: timedelta) -> signal_pb2.Signal:
    """One sleep log as a signal; MalformedRecord when it cannot be one."""
    if not isinstance(log, Mapping):
        raise MalformedRecord("sleep log is not an object")
    log_id = log.get("logId")
    if not isinstance(log_id, int) or isinstance(log_id, bool):
        raise MalformedRecord("sleep log has no logId")
    start = _local_time(log.get("startTime"), offset, "startTime")
    end = _local_time(log.get("endTime"), offset, "endTime")
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


def _day(value: object) -> date | None:
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        return None


class Fitbit(Connector):
    id = "fitbit"
    display_name = "Fitbit"
    description = "Uses how you slept to pace the day's tips."
    signal_kinds = (signal_pb2.SIGNAL_KIND_SLEEP,)
    consent_purpose = "sleep-data-for-tips"
    scopes = ("sleep", "profile")
    endpoints = Endpoints(
        authorize_url="https://www.fitbit.com/oauth2/authorize",
        token_url="https://api.fitbit.com/oauth2/token",
        api_base_url="https://api.fitbit.com/",
        revoke_url="https://api.fitbit.com/oauth2/revoke",
    )
    default_sync_interval = timedelta(hours=1)
    min_sync_interval = timedelta(minutes=15)

    async def fetch(self, api: Any, cursor: Cursor, ctx: FetchContext) -> AsyncIterator[Page]:
        profile = await api.get_json(PROFILE_PATH)
        user = profile.get("user") if isinstance(profile, Mapping) else None
        millis = user.get("offsetFromUTCMillis", 0) if isinstance(user, Mapping) else 0
        offset = timedelta(milliseconds=millis if isinstance(millis, int) else 0)
        after = _day(cursor.get("after_date")) or (ctx.now - ctx.backfill).date()
        newest = after
        link: str | None = cursor.get("next")
        while True:
            if link:
                body = await api.get_json(link)
            else:
                params = {
                    "afterDate": after.isoformat(),
                    "sort": "asc",
                    "limit": min(ctx.page_size, MAX_LIMIT),
                    "offset": 0,
                }
                body = await api.get_json(SLEEP_PATH, params)
            page = Page()
            logs = body.get("sleep") if isinstance(body, Mapping) else None
            for log in logs if isinstance(logs, list) else []:
                page.records += 1
                try:
                    page.signals.append(normalise(log, ctx.connection, offset))
                except MalformedRecord:
                    page.skipped += 1
                    continue
                day = _day(log.get("dateOfSleep")) if isinstance(log, Mapping) else None
                if day is not None and day > newest:
                    newest = day
            pagination = body.get("pagination") if isinstance(body, Mapping) else None
            link = pagination.get("next") if isinstance(pagination, Mapping) else None
            # Overlap one day: a sleep still being written today is fetched again later.
            window = max(after, newest - timedelta(days=1)).isoformat()
            page.cursor = {"after_date": window}
            if link:
                page.cursor["next"] = link
                yield page
                continue
            yield page
            return


CONNECTOR = Fitbit()

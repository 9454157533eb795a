"""Google Calendar: the user's primary calendar as CALENDAR_EVENT signals.

API: ``GET /calendar/v3/calendars/primary/events`` (events.list). A full sync
pages with ``pageToken`` from ``timeMin`` (the backfill window); the last
page carries ``nextSyncToken``, stored as the cursor. Later syncs send only
``syncToken`` (Google forbids timeMin with it) and get what changed,
cancelled events included (``status: cancelled``, often with no times).
HTTP 410 means the sync token expired: it is dropped and a full sync runs.
A half-done pagination is resumed from the stored ``pageToken``.

client_signal_id ``gcal:{event id}:{updated}`` changes with every edit, so
each version is one signal and a re-fetched version is a duplicate.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
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
from services.integrations.connectors.common import client_id, parse_rfc3339
from services.integrations.connectors.http import Gone
from tips.events.v1 import signal_pb2

EVENTS_PATH = "calendar/v3/calendars/primary/events"


def _when(value: object, what: str) -> tuple[datetime, bool] | None:
    """(time, all_day) of an event's start or end object."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise MalformedRecord(f"{what} is not an object")
    if "dateTime" in value:
        return parse_rfc3339(value["dateTime"], f"{what}.dateTime"), False
    if "date" in value:
        try:
            day = datetime.strptime(str(value["date"]), "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            raise MalformedRecord(f"{what}.date is not a date") from None
        return day, True
    raise MalformedRecord(f"{what} has neither dateTime nor date")


def normalise(event: object, connection: str) -> signal_pb2.Signal:
    """One events.list item as a signal; MalformedRecord when it cannot be one."""
    if not isinstance(event, Mapping):
        raise MalformedRecord("event is not an object")
    event_id = event.get("id")
    if not isinstance(event_id, str) or not event_id:
        raise MalformedRecord("event has no id")
    cancelled = event.get("status") == "cancelled"
    updated = event.get("updated")
    start = _when(event.get("start") or event.get("originalStartTime"), "start")
    end = _when(event.get("end"), "end")
    if start is None:
        if not cancelled:
            raise MalformedRecord("event has no start")
        # A deleted event may carry only id and status: place it at its update time.
        start = (parse_rfc3339(updated, "updated"), False) if updated else None
        if start is None:
            raise MalformedRecord("cancelled event has neither start nor updated")
    attendees = event.get("attendees")
    version = str(updated) if updated else ("cancelled" if cancelled else "v")
    signal = signal_pb2.Signal(
        client_signal_id=client_id("gcal", event_id, version),
        kind=signal_pb2.SIGNAL_KIND_CALENDAR_EVENT,
        source=signal_pb2.SIGNAL_SOURCE_CONNECTOR,
        connection=connection,
        start_time=timestamp(start[0]),
        calendar_event=signal_pb2.CalendarEventPayload(
            event_id=event_id,
            busy=event.get("transparency", "opaque") != "transparent",
            cancelled=cancelled,
            all_day=start[1],
            attendee_count=len(attendees) if isinstance(attendees, list) else 0,
        ),
    )
    if end is not None and end[0] >= start[0]:
        signal.end_time.CopyFrom(timestamp(end[0]))
    return signal


class GoogleCalendar(Connector):
    id = "google_calendar"
    display_name = "Google Calendar"
    description = "Finds free time between your meetings for tips that fit."
    signal_kinds = (signal_pb2.SIGNAL_KIND_CALENDAR_EVENT,)
    consent_purpose = "calendar-data-for-tips"
    scopes = ("https://www.googleapis.com/auth/calendar.events.readonly",)
    endpoints = Endpoints(
        authorize_url="https://accounts.google.com/o/oauth2/v2/auth",
        token_url="https://oauth2.googleapis.com/token",
        api_base_url="https://www.googleapis.com/",
        revoke_url="https://oauth2.googleapis.com/revoke",
    )
    # Offline access gives a refresh token; prompt=consent gives one again on reconnect.
    authorize_params = {
        "access_type": "offline",
        "prompt": "consent",
        "include_granted_scopes": "true",
    }
    default_sync_interval = timedelta(minutes=15)
    min_sync_interval = timedelta(minutes=5)

    async def fetch(self, api: Any, cursor: Cursor, ctx: FetchContext) -> AsyncIterator[Page]:
        sync_token = cursor.get("sync_token")
        page_token = cursor.get("page_token")
        time_min = cursor.get("time_min") or (ctx.now - ctx.backfill).isoformat()
        while True:
            params: dict[str, Any] = {"maxResults": ctx.page_size, "singleEvents": "true"}
            if sync_token:
                params["syncToken"] = sync_token
            else:
                params["timeMin"] = time_min
            if page_token:
                params["pageToken"] = page_token
            try:
                body = await api.get_json(EVENTS_PATH, params)
            except Gone:
                # The sync token expired: start a full sync over the backfill window.
                sync_token, page_token = None, None
                time_min = (ctx.now - ctx.backfill).isoformat()
                continue
            page = Page()
            items = body.get("items") if isinstance(body, Mapping) else None
            for item in items if isinstance(items, list) else []:
                page.records += 1
                try:
                    page.signals.append(normalise(item, ctx.connection))
                except MalformedRecord:
                    page.skipped += 1
            next_page = body.get("nextPageToken") if isinstance(body, Mapping) else None
            if next_page:
                page_token = str(next_page)
                page.cursor = {"page_token": page_token, "time_min": time_min}
                if sync_token:
                    page.cursor["sync_token"] = sync_token
                yield page
                continue
            next_sync = body.get("nextSyncToken") if isinstance(body, Mapping) else None
            page.cursor = {"sync_token": str(next_sync)} if next_sync else {}
            yield page
            return


CONNECTOR = GoogleCalendar()

"""Local stand-ins for the data providers' APIs, over real HTTP (Starlette + uvicorn).

Development only, like ``tipsmesh.devidp``: `tips up` runs one so a newcomer
can connect accounts in the web app without a Google or Fitbit developer
account, and the connector tests use it as the providers. The integrations
service accepts provider URLs that are not https only in dev mode
(``TIPS_DEV_MODE``). One server stands in for every provider; it follows
their documented formats closely enough for the connectors to run against it
as against the real thing:

- an OAuth 2.0 server: ``/oauth/authorize`` (checks client, redirect URI,
  S256 challenge, answers 302 with ``code`` and ``state``), ``/oauth/token``
  (HTTP Basic client auth; ``authorization_code`` with the PKCE verifier
  checked, ``refresh_token``; ``invalid_grant`` as RFC 6749 says) and
  ``/oauth/revoke``. With ``consent_page`` (as `tips up` runs it) the
  authorize endpoint first shows a page asking the user to Allow or Deny;
  Deny answers ``error=access_denied`` (RFC 6749 4.1.2.1);
- Google Calendar ``GET /calendar/v3/calendars/primary/events``: pages with
  ``nextPageToken``, ``nextSyncToken`` on the last page, incremental results
  for a ``syncToken`` (cancelled events included), 410 for a stale one;
- Fitbit ``GET /1/user/-/profile.json`` (``offsetFromUTCMillis``, and
  ``timezone`` when set), ``GET /1.2/user/-/sleep/list.json`` and
  ``GET /1/user/-/activities/list.json`` with ``afterDate``/``sort``/``limit``/
  ``offset`` and ``pagination.next``, and the activity time series
  ``GET /1/user/-/activities/{resource}/date/{start}/{end}.json`` (one string
  value per day, "0" for a day without data, 400 for a bad range).

The data is what a test puts in (``put_event``, ``sleep_logs``, ``daily``,
...), or with ``generated`` (as `tips up` runs it) an account's worth made up
relative to now, the same for every access token: a week of steps and active
minutes (today's growing through the day), a sleep log per night, walks and
runs, and calendar events from yesterday to three days ahead with a meeting
one to two hours from now (``generated_*``; deterministic per day).

Faults are scripted: ``faults`` is a queue of responses served instead of the
next API requests (``(429, {"Retry-After": "1"})``, ``(503, {})``, ...), and
``faults_at`` entries are served instead of the next request whose URL
contains their first item (``("offset=2", 503, {})``);
``expire_access_tokens()`` makes every issued access token answer 401.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import html
import json
import os
import random
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tipsmesh.localinfra import free_port

# The tests' one client, registered for every provider.
CLIENT_ID = "standin-client"
CLIENT_SECRET = "standin-secret-do-not-log"
# Fitbit activity time series the stand-in serves.
SERIES = ("steps", "minutesFairlyActive", "minutesVeryActive", "minutesLightlyActive")
# The integrations service's providers the stand-in serves.
PROVIDERS = ("google_calendar", "fitbit", "fitbit_activity")
# `tips up`'s OAuth clients: provider -> (client id, the name its consent page shows).
# Both Fitbit connectors use one Fitbit app, as docs/connectors.md allows.
DEV_CLIENTS = {
    "google_calendar": ("tips-dev-google", "Google Calendar"),
    "fitbit": ("tips-dev-fitbit", "Fitbit"),
    "fitbit_activity": ("tips-dev-fitbit", "Fitbit"),
}
# What the consent page says each scope lets Tips read.
SCOPE_WORDS = {
    "https://www.googleapis.com/auth/calendar.events.readonly": "the events on your calendars",
    "activity": "your steps, active minutes and workouts",
    "sleep": "your sleep logs",
    "profile": "your profile (its time zone)",
}


def _form(body: bytes) -> dict[str, str]:
    """An application/x-www-form-urlencoded body (no python-multipart needed)."""
    return dict(parse_qsl(body.decode(errors="replace"), keep_blank_values=True))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def with_query(uri: str, params: Mapping[str, str]) -> str:
    """``uri`` with ``params`` added to its query (RFC 6749 3.1.2: it may have one)."""
    parts = urlsplit(uri)
    query = [*parse_qsl(parts.query, keep_blank_values=True), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


@dataclass(frozen=True)
class Client:
    """An OAuth client registered at the stand-in."""

    secret: str
    # The provider's name, as the consent page says it.
    name: str = "the provider"
    # Registered redirect URIs (exact match); empty accepts any (the tests).
    redirect_uris: tuple[str, ...] = ()


def _test_clients() -> dict[str, Client]:
    return {CLIENT_ID: Client(CLIENT_SECRET)}


_CONSENT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Allow Tips to read your {provider} data? (development)</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 26rem; margin: 2rem auto;
  padding: 0 1rem">
<main>
<h1>Allow Tips to read your {provider} data?</h1>
<p><strong>Development stand-in, not the real {provider}.</strong> A local server
that <code>tips up</code> runs; it serves made-up data to whoever connects.</p>
<p id="asks">Tips asks to read:</p>
<ul aria-labelledby="asks">{scopes}</ul>
<form method="post" action="/oauth/authorize">{kept}
<button type="submit" name="decision" value="allow"
  style="font-size: 1rem; padding: .6rem 1.2rem; min-height: 44px">Allow</button>
<button type="submit" name="decision" value="deny"
  style="font-size: 1rem; padding: .6rem 1.2rem; min-height: 44px">Deny</button>
</form></main></body></html>
"""


@dataclass
class ProviderStandIn:
    access_ttl: int = 3600
    clients: dict[str, Client] = field(default_factory=_test_clients)
    # Ask the user to Allow or Deny (a browser's consent), instead of answering at once.
    consent_page: bool = False
    # Serve an account's worth of data made up relative to now (generated_*).
    generated: bool = False
    # Where issued tokens are kept (0600), so grants outlive a restart; None: memory only.
    state_file: Path | None = None
    port: int = 0
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    access_tokens: set[str] = field(default_factory=set)
    # Access token -> when it stops being accepted (time.time()).
    access_expiry: dict[str, float] = field(default_factory=dict)
    refresh_tokens: set[str] = field(default_factory=set)
    issued: list[str] = field(default_factory=list)  # every token ever issued (for leak checks)
    revoked: list[str] = field(default_factory=list)
    faults: deque[tuple[int, dict[str, str]]] = field(default_factory=deque)
    # (URL part, status, headers): served instead of the next request whose URL contains it.
    faults_at: list[tuple[str, int, dict[str, str]]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    token_requests: list[str] = field(default_factory=list)
    # Google Calendar: events with a modification sequence number.
    events: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    seq: int = 0
    stale_below: int = 0  # sync tokens older than this answer 410
    # Fitbit
    sleep_logs: list[dict[str, Any]] = field(default_factory=list)
    utc_offset_millis: int = 0
    timezone: str = ""  # the profile's IANA zone; omitted when empty
    activity_logs: list[dict[str, Any]] = field(default_factory=list)
    # Local day (YYYY-MM-DD) -> time series resource ("steps", ...) -> value, as served.
    daily: dict[str, dict[str, Any]] = field(default_factory=dict)
    base_url: str = ""
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    # --- test controls -------------------------------------------------------

    def expire_access_tokens(self) -> None:
        self.access_tokens.clear()

    def put_event(self, event: dict[str, Any]) -> None:
        self.seq += 1
        self.events[event["id"]] = (self.seq, event)

    def put_raw(self, key: str, record: dict[str, Any]) -> None:
        """A record as-is (e.g. malformed), listed like any event."""
        self.seq += 1
        self.events[key] = (self.seq, record)

    def invalidate_sync_tokens(self) -> None:
        self.stale_below = self.seq + 1

    # --- OAuth ---------------------------------------------------------------

    def _issue(self) -> dict[str, Any]:
        access, refresh = f"at-{secrets.token_hex(16)}", f"rt-{secrets.token_hex(16)}"
        self.access_tokens.add(access)
        self.access_expiry[access] = time.time() + self.access_ttl
        self.refresh_tokens.add(refresh)
        self.issued += [access, refresh]
        return {
            "access_token": access,
            "refresh_token": refresh,
            "expires_in": self.access_ttl,
            "token_type": "Bearer",
            "scope": "standin.read",
        }

    def _authorization_problem(self, q: Mapping[str, str]) -> Response | None:
        """Why the request cannot be answered at its redirect URI (RFC 6749 4.1.2.1), or None."""
        client = self.clients.get(q.get("client_id", ""))
        if client is None or q.get("response_type") != "code":
            return JSONResponse({"error": "unauthorized_client"}, 400)
        if client.redirect_uris and q.get("redirect_uri") not in client.redirect_uris:
            return JSONResponse({"error": "invalid_request", "fields": ["redirect_uri"]}, 400)
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return JSONResponse({"error": "invalid_request"}, 400)
        return None

    async def authorize(self, request: Request) -> Response:
        posted = request.method == "POST"
        q = _form(await request.body()) if posted else dict(request.query_params)
        refused = self._authorization_problem(q)
        if refused is not None:
            return refused
        decision = q.get("decision") if posted else None
        if self.consent_page and decision is None:
            return self._consent_form(q)
        # A POST (the consent form) is answered with 303: the browser then GETs the client.
        status = 303 if posted else 302
        redirect_uri = q.get("redirect_uri", "")
        if self.consent_page and decision != "allow":
            answer = {
                "error": "access_denied",
                "error_description": "The user denied the request.",
                "state": q.get("state", ""),
            }
            return RedirectResponse(with_query(redirect_uri, answer), status)
        code = secrets.token_hex(12)
        self.codes[code] = {
            "challenge": q["code_challenge"],
            "redirect_uri": redirect_uri,
            "client_id": q["client_id"],
        }
        answer = {"code": code, "state": q.get("state", ""), "scope": q.get("scope", "")}
        return RedirectResponse(with_query(redirect_uri, answer), status)

    def _consent_form(self, q: Mapping[str, str]) -> Response:
        """Allow or Deny, the provider's consent screen in miniature; the request carried along."""
        client = self.clients[q["client_id"]]
        kept = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in q.items()
            if k != "decision"
        )
        scopes = "".join(
            f"<li>{html.escape(SCOPE_WORDS.get(s, s))}</li>" for s in q.get("scope", "").split()
        )
        page = _CONSENT_PAGE.format(
            provider=html.escape(client.name), scopes=scopes or "<li>nothing</li>", kept=kept
        )
        return HTMLResponse(page, headers={"cache-control": "no-store"})

    def _client_of(self, request: Request) -> str | None:
        """The client id HTTP Basic authenticates, or None."""
        header = request.headers.get("authorization", "")
        if not header.startswith("Basic "):
            return None
        try:
            client_id, _, secret = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return None
        client = self.clients.get(client_id)
        if client is None or not hmac.compare_digest(secret, client.secret):
            return None
        return client_id

    async def token(self, request: Request) -> Response:
        form = _form(await request.body())
        self.token_requests.append(str(form.get("grant_type")))
        client_id = self._client_of(request)
        if client_id is None:
            return JSONResponse({"error": "invalid_client"}, 401)
        grant = form.get("grant_type")
        if grant == "authorization_code":
            entry = self.codes.pop(str(form.get("code")), None)
            verifier = str(form.get("code_verifier", ""))
            challenge = _b64url(hashlib.sha256(verifier.encode()).digest())
            if (
                entry is None
                or entry["challenge"] != challenge
                or entry["redirect_uri"] != form.get("redirect_uri")
                or entry["client_id"] != client_id
            ):
                return JSONResponse({"error": "invalid_grant"}, 400)
            issued = self._issue()
            self.save_grants()
            return JSONResponse(issued)
        if grant == "refresh_token":
            refresh = str(form.get("refresh_token"))
            if refresh not in self.refresh_tokens:
                return JSONResponse({"error": "invalid_grant"}, 400)
            issued = self._issue()
            # Rotate: the old refresh token stops working.
            self.refresh_tokens.discard(refresh)
            self.save_grants()
            return JSONResponse(issued)
        return JSONResponse({"error": "unsupported_grant_type"}, 400)

    async def revoke(self, request: Request) -> Response:
        form = _form(await request.body())
        token = str(form.get("token"))
        self.revoked.append(token)
        self.refresh_tokens.discard(token)
        self.access_tokens.discard(token)
        self.save_grants()
        return Response(status_code=200)

    def _api_gate(self, request: Request) -> Response | None:
        self.requests.append(str(request.url))
        if self.faults:
            status, headers = self.faults.popleft()
            return JSONResponse({"error": {"code": status}}, status, headers=headers)
        for i, (part, status, headers) in enumerate(self.faults_at):
            if part in str(request.url):
                del self.faults_at[i]
                return JSONResponse({"error": {"code": status}}, status, headers=headers)
        auth = request.headers.get("authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        if token not in self.access_tokens or self.access_expiry.get(token, 0) < time.time():
            return JSONResponse({"error": {"code": 401, "status": "UNAUTHENTICATED"}}, 401)
        if self.generated:
            self.generate(datetime.now(UTC))
        return None

    # --- grants kept across restarts ---------------------------------------------

    def save_grants(self) -> None:
        if self.state_file is None:
            return
        now = time.time()
        live = {t: e for t, e in self.access_expiry.items() if e > now and t in self.access_tokens}
        state = {"access": live, "refresh": sorted(self.refresh_tokens)}
        tmp = self.state_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(state, handle)
        tmp.replace(self.state_file)

    def load_grants(self) -> None:
        if self.state_file is None:
            return
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return
        self.access_expiry.update({str(t): float(e) for t, e in state.get("access", {}).items()})
        self.access_tokens.update(self.access_expiry)
        self.refresh_tokens.update(str(t) for t in state.get("refresh", []))

    # --- Google Calendar -----------------------------------------------------

    async def calendar_events(self, request: Request) -> Response:
        refused = self._api_gate(request)
        if refused is not None:
            return refused
        q = request.query_params
        size = int(q.get("maxResults", "250"))
        if "pageToken" in q:
            state = json.loads(base64.urlsafe_b64decode(q["pageToken"]))
            since, offset, snapshot = state["since"], state["offset"], state["snapshot"]
        elif "syncToken" in q:
            since = int(q["syncToken"].removeprefix("st-"))
            if since < self.stale_below:
                return JSONResponse(
                    {"error": {"code": 410, "message": "Sync token is no longer valid"}}, 410
                )
            offset, snapshot = 0, self.seq
        else:
            since, offset, snapshot = -1, 0, self.seq
        # A full sync lists live events only; an incremental one includes cancellations.
        items = [
            event
            for seq, event in sorted(self.events.values(), key=lambda e: e[0])
            if seq <= snapshot
            and (seq > since if since >= 0 else event.get("status") != "cancelled")
        ]
        page = items[offset : offset + size]
        body: dict[str, Any] = {"kind": "calendar#events", "items": page}
        if offset + size < len(items):
            token = {"since": since, "offset": offset + size, "snapshot": snapshot}
            body["nextPageToken"] = base64.urlsafe_b64encode(json.dumps(token).encode()).decode()
        else:
            body["nextSyncToken"] = f"st-{snapshot}"
        return JSONResponse(body)

    # --- Fitbit --------------------------------------------------------------

    async def fitbit_profile(self, request: Request) -> Response:
        refused = self._api_gate(request)
        if refused is not None:
            return refused
        user: dict[str, Any] = {"offsetFromUTCMillis": self.utc_offset_millis}
        if self.timezone:
            user["timezone"] = self.timezone
        return JSONResponse({"user": user})

    async def fitbit_sleep(self, request: Request) -> Response:
        refused = self._api_gate(request)
        if refused is not None:
            return refused
        q = request.query_params
        after, limit = q.get("afterDate", ""), min(int(q.get("limit", "100")), 100)
        offset = int(q.get("offset", "0"))
        logs = sorted(
            (x for x in self.sleep_logs if str(x.get("dateOfSleep", "9999")) >= after),
            key=lambda x: str(x.get("startTime", "")),
        )
        return self._log_page("sleep", logs, "/1.2/user/-/sleep/list.json", after, limit, offset)

    async def fitbit_activities(self, request: Request) -> Response:
        refused = self._api_gate(request)
        if refused is not None:
            return refused
        q = request.query_params
        after, limit = q.get("afterDate", ""), int(q.get("limit", "100"))
        if not after or q.get("sort") != "asc" or not 0 < limit <= 100:
            return JSONResponse({"errors": [{"errorType": "validation"}]}, 400)
        offset = int(q.get("offset", "0"))
        logs = sorted(
            (x for x in self.activity_logs if str(x.get("startTime", "9999")) >= after),
            key=lambda x: str(x.get("startTime", "")),
        )
        path = "/1/user/-/activities/list.json"
        return self._log_page("activities", logs, path, after, limit, offset)

    def _log_page(
        self, items: str, logs: list[dict[str, Any]], path: str, after: str, limit: int, offset: int
    ) -> Response:
        """One page of a Fitbit log list, with ``pagination.next`` while more follow."""
        nxt = ""
        if offset + limit < len(logs):
            params = {"afterDate": after, "sort": "asc", "limit": limit, "offset": offset + limit}
            nxt = f"{self.base_url}{path}?{urlencode(params)}"
        pagination = {
            "afterDate": after,
            "limit": limit,
            "next": nxt,
            "offset": offset,
            "previous": "",
            "sort": "asc",
        }
        return JSONResponse({items: logs[offset : offset + limit], "pagination": pagination})

    async def fitbit_series(self, request: Request) -> Response:
        refused = self._api_gate(request)
        if refused is not None:
            return refused
        resource = request.path_params["resource"]
        try:
            start = date.fromisoformat(request.path_params["start"])
            end = date.fromisoformat(request.path_params["end"])
        except ValueError:
            return JSONResponse({"errors": [{"errorType": "validation"}]}, 400)
        if resource not in SERIES or not start <= end <= start + timedelta(days=1094):
            return JSONResponse({"errors": [{"errorType": "validation"}]}, 400)
        values = []
        day = start
        while day <= end:
            value = self.daily.get(day.isoformat(), {}).get(resource, 0)
            values.append({"dateTime": day.isoformat(), "value": str(value)})
            day += timedelta(days=1)
        return JSONResponse({f"activities-{resource}": values})

    # --- generated data -------------------------------------------------------

    def zone(self) -> tzinfo:
        """The account's zone: its IANA ``timezone``, else its UTC offset."""
        if self.timezone:
            return ZoneInfo(self.timezone)
        return timezone(timedelta(milliseconds=self.utc_offset_millis))

    def generate(self, now: datetime) -> None:
        """The account's data as of ``now`` (``generated``): replaces the Fitbit data,
        and puts the calendar events that are new or changed (a sync token sees them)."""
        local = now.astimezone(self.zone())
        self.daily = generated_daily(local)
        self.sleep_logs = generated_sleep(local)
        self.activity_logs = generated_activities(local)
        for event in generated_calendar(local):
            known = self.events.get(event["id"])
            if known is None or known[1] != event:
                self.put_event(event)

    # --- serving ----------------------------------------------------------------

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/oauth/authorize", self.authorize, methods=["GET", "POST"]),
                Route("/oauth/token", self.token, methods=["POST"]),
                Route("/oauth/revoke", self.revoke, methods=["POST"]),
                Route("/calendar/v3/calendars/primary/events", self.calendar_events),
                Route("/1/user/-/profile.json", self.fitbit_profile),
                Route("/1.2/user/-/sleep/list.json", self.fitbit_sleep),
                Route("/1/user/-/activities/list.json", self.fitbit_activities),
                Route(
                    "/1/user/-/activities/{resource}/date/{start}/{end}.json", self.fitbit_series
                ),
            ]
        )

    async def start(self) -> ProviderStandIn:
        """Serve on ``port`` (a free one when 0) of 127.0.0.1, in this event loop."""
        self.load_grants()
        if self.generated:
            # Sync tokens of an earlier run (another event history) answer 410: a full sync.
            self.seq = self.stale_below = max(self.seq, int(time.time() * 1000))
        self.port = self.port or free_port()
        config = uvicorn.Config(
            self.app(), host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.get_running_loop().create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the provider stand-in did not start")
            await asyncio.sleep(0.01)
        self.base_url = f"http://127.0.0.1:{self.port}"
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            async with asyncio.timeout(5):
                await self._task


@contextlib.asynccontextmanager
async def serve_standin(standin: ProviderStandIn) -> AsyncIterator[str]:
    """Serve ``standin`` on a free port in this event loop; yields its base URL."""
    await standin.start()
    try:
        yield standin.base_url
    finally:
        await standin.stop()


def provider_settings(
    base_url: str,
    client_secret: str = CLIENT_SECRET,
    client_ids: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``integrations_providers`` pointing every connector at the stand-in."""
    ids = client_ids or dict.fromkeys(PROVIDERS, CLIENT_ID)
    return {
        provider: {
            "client_id": ids[provider],
            "client_secret": client_secret,
            "authorize_url": f"{base_url}/oauth/authorize",
            "token_url": f"{base_url}/oauth/token",
            "revoke_url": f"{base_url}/oauth/revoke",
            "api_base_url": base_url,
        }
        for provider in PROVIDERS
    }


def dev_standin(secret: str, redirect_uris: tuple[str, ...], state_file: Path) -> ProviderStandIn:
    """The stand-in `tips up` runs: `DEV_CLIENTS`, a consent page, generated data."""
    clients = {cid: Client(secret, name, redirect_uris) for cid, name in DEV_CLIENTS.values()}
    offset = datetime.now().astimezone().utcoffset() or timedelta()
    return ProviderStandIn(
        clients=clients,
        consent_page=True,
        generated=True,
        state_file=state_file,
        # The account lives in this machine's zone.
        utc_offset_millis=int(offset.total_seconds() * 1000),
    )


def dev_provider_settings(base_url: str, secret: str) -> dict[str, Any]:
    """``integrations_providers`` for `dev_standin`'s clients."""
    ids = {provider: client for provider, (client, _) in DEV_CLIENTS.items()}
    return provider_settings(base_url, secret, ids)


# --- an account's data, relative to now --------------------------------------------------
#
# Each function takes the local time in the account's zone and is deterministic
# per local day (a day's numbers come from a generator seeded with the day), so
# a sync repeated within the day sees the same records, and today's totals only
# grow. Records still in the future are not served.

WEEK = 7


def _rng(day: date, what: str) -> random.Random:
    return random.Random(f"{day.isoformat()}:{what}")


def _local(day: date, hour: int, minute: int, zone: tzinfo | None) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)


def _fitbit_time(when: datetime) -> str:
    """Fitbit's local time without an offset: ``2026-11-30T07:05:00.000``."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.000")


def _day_progress(local: datetime) -> float:
    """How much of a day's activity has happened by ``local`` (07:00 to 22:00)."""
    hours = local.hour + local.minute / 60
    return min(1.0, max(0.0, (hours - 7) / 15))


def generated_daily(local: datetime) -> dict[str, dict[str, Any]]:
    """The activity time series of the last week and today (today's so far)."""
    today = local.date()
    daily = {}
    for back in range(WEEK, -1, -1):
        day = today - timedelta(days=back)
        rng = _rng(day, "activity")
        share = _day_progress(local) if day == today else 1.0
        totals = {
            "steps": rng.randint(4500, 12500),
            "minutesFairlyActive": rng.randint(8, 40),
            "minutesVeryActive": rng.randint(0, 35),
            "minutesLightlyActive": rng.randint(120, 260),
        }
        daily[day.isoformat()] = {k: int(v * share) for k, v in totals.items()}
    return daily


def generated_sleep(local: datetime) -> list[dict[str, Any]]:
    """One main sleep per night of the last week, the last one if it has ended."""
    logs = []
    for back in range(WEEK - 1, -1, -1):
        woke_on = local.date() - timedelta(days=back)
        rng = _rng(woke_on, "sleep")
        start = _local(woke_on - timedelta(days=1), 22, 30, local.tzinfo) + timedelta(
            minutes=rng.randint(0, 75)
        )
        in_bed = rng.randint(400, 510)
        end = start + timedelta(minutes=in_bed)
        if end > local:
            continue
        awake = rng.randint(15, 50)
        logs.append(
            {
                "logId": int(woke_on.strftime("%Y%m%d")) * 10 + 1,
                "dateOfSleep": woke_on.isoformat(),
                "startTime": _fitbit_time(start),
                "endTime": _fitbit_time(end),
                "duration": in_bed * 60_000,
                "timeInBed": in_bed,
                "minutesAsleep": in_bed - awake,
                "minutesAwake": awake,
                "efficiency": round(100 * (in_bed - awake) / in_bed),
                "isMainSleep": True,
                "type": "classic",
            }
        )
    return logs


def generated_activities(local: datetime) -> list[dict[str, Any]]:
    """A lunchtime walk most days and a morning run some days, those already over."""
    logs = []
    for back in range(WEEK, -1, -1):
        day = local.date() - timedelta(days=back)
        rng = _rng(day, "workouts")
        planned = []
        if rng.random() < 0.45:
            planned.append(("Run", 2, 7, 0, rng.randint(25, 50), 0.18))
        if rng.random() < 0.8:
            planned.append(("Walk", 3, 12, 15, rng.randint(20, 45), 0.08))
        for name, kind, hour, minute, minutes, km_per_minute in planned:
            start = _local(day, hour, minute, local.tzinfo)
            end = start + timedelta(minutes=minutes)
            if end > local:
                continue
            logs.append(
                {
                    "logId": int(day.strftime("%Y%m%d")) * 10 + kind,
                    "activityName": name,
                    "startTime": start.isoformat(timespec="milliseconds"),
                    "duration": minutes * 60_000,
                    "activeDuration": minutes * 60_000,
                    "calories": minutes * (11 if name == "Run" else 5),
                    "distance": round(minutes * km_per_minute, 2),
                    "distanceUnit": "Kilometer",
                    "steps": minutes * (160 if name == "Run" else 110),
                    "lastModified": end.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                }
            )
    return logs


# (id suffix, summary, hour, minute, minutes, attendees, busy)
_AGENDA = (
    ("standup", "Stand-up", 9, 30, 15, 6, True),
    ("lunch", "Lunch", 13, 0, 60, 0, False),
    ("review", "Project review", 16, 0, 45, 4, True),
)


def _calendar_event(
    event_id: str, summary: str, start: datetime, minutes: int, attendees: int, busy: bool
) -> dict[str, Any]:
    day = start.date()
    # Each event was last changed the week before its day: a stable version.
    updated = datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(days=WEEK)
    event: dict[str, Any] = {
        "kind": "calendar#event",
        "id": event_id,
        "status": "confirmed",
        "summary": summary,
        "updated": updated.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "start": {"dateTime": start.isoformat()},
        "end": {"dateTime": (start + timedelta(minutes=minutes)).isoformat()},
    }
    if attendees:
        event["attendees"] = [
            {"email": f"colleague{i}@example.com", "responseStatus": "accepted"}
            for i in range(attendees)
        ]
    if not busy:
        event["transparency"] = "transparent"
    return event


def generated_calendar(local: datetime) -> list[dict[str, Any]]:
    """Events from yesterday to three days ahead, and a meeting 1-2 hours from now.

    The meeting ahead is one event per day, moved to the next hour but one as
    the day goes on (its ``updated`` changes with it), so calendar tips about
    the free time before it fire whenever the app is tried. Today's other
    events are listed once they are over: none comes before that meeting.
    """
    events = []
    today = local.date()
    for ahead in range(-1, 4):
        day = today + timedelta(days=ahead)
        stamp = day.strftime("%Y%m%d")
        agenda = list(_AGENDA)
        if _rng(day, "calendar").random() < 0.5:
            agenda.append(("oneonone", "1:1", 11, 0, 30, 1, True))
        for suffix, summary, hour, minute, minutes, attendees, busy in agenda:
            start = _local(day, hour, minute, local.tzinfo)
            if day == today and start + timedelta(minutes=minutes) > local:
                continue
            event_id = f"dev{stamp}{suffix}"
            events.append(_calendar_event(event_id, summary, start, minutes, attendees, busy))
    this_hour = local.replace(minute=0, second=0, microsecond=0)
    meeting = this_hour + timedelta(hours=2)
    event = _calendar_event(f"dev{today:%Y%m%d}planning", "Planning", meeting, 30, 3, True)
    event["updated"] = this_hour.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    events.append(event)
    return events

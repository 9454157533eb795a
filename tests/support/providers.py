"""Local stand-ins for provider APIs, served over real HTTP (Starlette + uvicorn).

They follow the providers' documented formats closely enough for the
connectors to be tested as they run against the real thing:

- an OAuth 2.0 server: ``/oauth/authorize`` (checks client, redirect URI,
  S256 challenge, answers 302 with ``code`` and ``state``), ``/oauth/token``
  (HTTP Basic client auth; ``authorization_code`` with the PKCE verifier
  checked, ``refresh_token``; ``invalid_grant`` as RFC 6749 says) and
  ``/oauth/revoke``;
- Google Calendar ``GET /calendar/v3/calendars/primary/events``: pages with
  ``nextPageToken``, ``nextSyncToken`` on the last page, incremental results
  for a ``syncToken`` (cancelled events included), 410 for a stale one;
- Fitbit ``GET /1/user/-/profile.json`` (``offsetFromUTCMillis``, and
  ``timezone`` when set), ``GET /1.2/user/-/sleep/list.json`` and
  ``GET /1/user/-/activities/list.json`` with ``afterDate``/``sort``/``limit``/
  ``offset`` and ``pagination.next``, and the activity time series
  ``GET /1/user/-/activities/{resource}/date/{start}/{end}.json`` (one string
  value per day, "0" for a day without data, 400 for a bad range).

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
import json
import secrets
from collections import deque
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tipsmesh.localinfra import free_port

CLIENT_ID = "standin-client"
CLIENT_SECRET = "standin-secret-do-not-log"
# Fitbit activity time series the stand-in serves.
SERIES = ("steps", "minutesFairlyActive", "minutesVeryActive", "minutesLightlyActive")


def _form(body: bytes) -> dict[str, str]:
    """An application/x-www-form-urlencoded body (no python-multipart needed)."""
    return {k: v[0] for k, v in parse_qs(body.decode()).items()}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class ProviderStandIn:
    access_ttl: int = 3600
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    access_tokens: set[str] = field(default_factory=set)
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
        self.refresh_tokens.add(refresh)
        self.issued += [access, refresh]
        return {
            "access_token": access,
            "refresh_token": refresh,
            "expires_in": self.access_ttl,
            "token_type": "Bearer",
            "scope": "standin.read",
        }

    async def authorize(self, request: Request) -> Response:
        q = request.query_params
        if q.get("client_id") != CLIENT_ID or q.get("response_type") != "code":
            return JSONResponse({"error": "unauthorized_client"}, 400)
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return JSONResponse({"error": "invalid_request"}, 400)
        code = secrets.token_hex(12)
        self.codes[code] = {
            "challenge": q["code_challenge"],
            "redirect_uri": q.get("redirect_uri", ""),
        }
        query = urlencode({"code": code, "state": q.get("state", ""), "scope": q.get("scope", "")})
        return RedirectResponse(f"{q.get('redirect_uri')}?{query}", 302)

    def _client_ok(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        return header == f"Basic {expected}"

    async def token(self, request: Request) -> Response:
        form = _form(await request.body())
        self.token_requests.append(str(form.get("grant_type")))
        if not self._client_ok(request):
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
            ):
                return JSONResponse({"error": "invalid_grant"}, 400)
            return JSONResponse(self._issue())
        if grant == "refresh_token":
            refresh = str(form.get("refresh_token"))
            if refresh not in self.refresh_tokens:
                return JSONResponse({"error": "invalid_grant"}, 400)
            issued = self._issue()
            # Rotate: the old refresh token stops working.
            self.refresh_tokens.discard(refresh)
            return JSONResponse(issued)
        return JSONResponse({"error": "unsupported_grant_type"}, 400)

    async def revoke(self, request: Request) -> Response:
        form = _form(await request.body())
        token = str(form.get("token"))
        self.revoked.append(token)
        self.refresh_tokens.discard(token)
        self.access_tokens.discard(token)
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
        if not auth.startswith("Bearer ") or auth[7:] not in self.access_tokens:
            return JSONResponse({"error": {"code": 401, "status": "UNAUTHENTICATED"}}, 401)
        return None

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
        page = logs[offset : offset + limit]
        more = offset + limit < len(logs)
        nxt = ""
        if more:
            params = {"afterDate": after, "sort": "asc", "limit": limit, "offset": offset + limit}
            nxt = f"{self.base_url}/1.2/user/-/sleep/list.json?{urlencode(params)}"
        return JSONResponse(
            {
                "sleep": page,
                "pagination": {
                    "afterDate": after,
                    "limit": limit,
                    "next": nxt,
                    "offset": offset,
                    "previous": "",
                    "sort": "asc",
                },
            }
        )

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
        nxt = ""
        if offset + limit < len(logs):
            params = {"afterDate": after, "sort": "asc", "limit": limit, "offset": offset + limit}
            nxt = f"{self.base_url}/1/user/-/activities/list.json?{urlencode(params)}"
        return JSONResponse(
            {
                "activities": logs[offset : offset + limit],
                "pagination": {
                    "afterDate": after,
                    "limit": limit,
                    "next": nxt,
                    "offset": offset,
                    "previous": "",
                    "sort": "asc",
                },
            }
        )

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

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/oauth/authorize", self.authorize),
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


@contextlib.asynccontextmanager
async def serve_standin(standin: ProviderStandIn) -> Any:
    """Serve ``standin`` on a free port in this event loop; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        standin.app(), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    standin.base_url = f"http://127.0.0.1:{port}"
    try:
        yield standin.base_url
    finally:
        server.should_exit = True
        await task


def provider_settings(base_url: str) -> dict[str, Any]:
    """``integrations_providers`` pointing every connector at the stand-in."""
    entry = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "authorize_url": f"{base_url}/oauth/authorize",
        "token_url": f"{base_url}/oauth/token",
        "revoke_url": f"{base_url}/oauth/revoke",
        "api_base_url": base_url,
    }
    return {
        "google_calendar": dict(entry),
        "fitbit": dict(entry),
        "fitbit_activity": dict(entry),
    }

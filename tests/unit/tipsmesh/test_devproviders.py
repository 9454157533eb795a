"""The development data providers (tipsmesh.devproviders) as `tips up` runs them:
the consent page, grants kept across restarts, and generated data the connectors read."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from services.integrations.connectors import fitbit, fitbit_activity, google_calendar
from services.integrations.connectors.fitbit_api import user_zone
from services.integrations.connectors.registry import all_connectors
from tipsmesh.devproviders import (
    DEV_CLIENTS,
    PROVIDERS,
    ProviderStandIn,
    dev_provider_settings,
    dev_standin,
    generated_activities,
    generated_calendar,
    generated_daily,
    generated_sleep,
)

pytestmark = pytest.mark.unit
FORM = {"content-type": "application/x-www-form-urlencoded"}

REDIRECT = "http://127.0.0.1:8080/app/?callback=connection"


def client(standin: ProviderStandIn) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=standin.app())
    return httpx.AsyncClient(transport=transport, base_url="http://standin")


CONN = "users/u1/connections/c1"
VERIFIER = "v" * 64
CHALLENGE = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=")


def _authorize_query(**extra: str) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": DEV_CLIENTS["fitbit_activity"][0],
        "redirect_uri": REDIRECT,
        "scope": "activity profile",
        "state": "st<ate>",
        "code_challenge": CHALLENGE.decode(),
        "code_challenge_method": "S256",
        **extra,
    }


def test_every_connector_has_a_dev_client_and_settings() -> None:
    assert set(DEV_CLIENTS) == set(PROVIDERS) == set(all_connectors())
    settings = dev_provider_settings("http://127.0.0.1:1", "s3cret")
    assert {p: s["client_id"] for p, s in settings.items()} == {
        p: client for p, (client, _) in DEV_CLIENTS.items()
    }
    assert all(
        s["authorize_url"] == "http://127.0.0.1:1/oauth/authorize" for s in settings.values()
    )


async def test_the_consent_page_asks_then_allow_or_deny_redirects(tmp_path: Path) -> None:
    standin = dev_standin("s3cret", (REDIRECT,), tmp_path / "grants.json")
    async with client(standin) as http:
        page = await http.get("/oauth/authorize", params=_authorize_query())
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "<h1>Allow Tips to read your Fitbit data?</h1>" in page.text
        assert "Development stand-in, not the real Fitbit" in page.text
        assert "your steps, active minutes and workouts" in page.text
        # The request rides along in the form, escaped.
        assert 'name="state" value="st&lt;ate&gt;"' in page.text
        assert 'value="allow"' in page.text and 'value="deny"' in page.text

        async def decide(decision: str) -> dict[str, list[str]]:
            form = urlencode({**_authorize_query(), "decision": decision})
            answer = await http.post("/oauth/authorize", content=form, headers=FORM)
            assert answer.status_code == 303, answer.text
            location = urlsplit(answer.headers["location"])
            assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT.split("?")[0]
            query = parse_qs(location.query)
            assert query["callback"] == ["connection"]  # the registered URI's own query kept
            assert query["state"] == ["st<ate>"]
            return query

        allowed = await decide("allow")
        assert allowed["code"][0] in standin.codes and "error" not in allowed
        denied = await decide("deny")
        assert denied["error"] == ["access_denied"] and "code" not in denied
        # Refused without a redirect: an unregistered redirect URI, an unknown client.
        other = await http.get(
            "/oauth/authorize", params=_authorize_query(redirect_uri="http://evil/")
        )
        assert other.status_code == 400 and "location" not in other.headers
        unknown = await http.get("/oauth/authorize", params=_authorize_query(client_id="nope"))
        assert unknown.status_code == 400


async def test_grants_outlive_a_restart_and_the_file_is_private(tmp_path: Path) -> None:
    state = tmp_path / "grants.json"
    standin = dev_standin("s3cret", (REDIRECT,), state)
    client_id = DEV_CLIENTS["fitbit"][0]
    async with client(standin) as http:
        form = urlencode({**_authorize_query(client_id=client_id), "decision": "allow"})
        answer = await http.post("/oauth/authorize", content=form, headers=FORM)
        code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
        body = {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": VERIFIER,
            "redirect_uri": REDIRECT,
        }
        wrong = await http.post("/oauth/token", data=body, auth=(client_id, "not-it"))
        assert wrong.status_code == 401
        tokens = (await http.post("/oauth/token", data=body, auth=(client_id, "s3cret"))).json()
    assert state.stat().st_mode & 0o777 == 0o600
    assert "s3cret" not in state.read_text()
    again = dev_standin("s3cret", (REDIRECT,), state)
    again.load_grants()
    async with client(again) as http:
        bearer = {"authorization": f"Bearer {tokens['access_token']}"}
        assert (await http.get("/1/user/-/profile.json", headers=bearer)).status_code == 200
        refreshed = await http.post(
            "/oauth/token",
            data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
            auth=(client_id, "s3cret"),
        )
        assert refreshed.status_code == 200
        unknown = {"authorization": "Bearer at-forged"}
        assert (await http.get("/1/user/-/profile.json", headers=unknown)).status_code == 401


ZONE = timezone(timedelta(hours=1))
# A Tuesday afternoon, and the same day's morning.
AFTERNOON = datetime(2026, 12, 1, 15, 20, tzinfo=ZONE)
MORNING = datetime(2026, 12, 1, 6, 40, tzinfo=ZONE)


def test_generated_fitbit_data_is_a_week_and_today_so_far() -> None:
    daily = generated_daily(AFTERNOON)
    assert len(daily) == 8 and max(daily) == "2026-12-01" and min(daily) == "2026-11-24"
    # Deterministic per day; today's totals only grow; past days are whole.
    assert generated_daily(AFTERNOON) == daily
    assert generated_daily(MORNING)["2026-12-01"]["steps"] == 0
    later = generated_daily(AFTERNOON + timedelta(hours=2))
    assert later["2026-12-01"]["steps"] > daily["2026-12-01"]["steps"] > 0
    assert later["2026-11-30"] == daily["2026-11-30"]
    body = {
        "activities-steps": [{"dateTime": d, "value": str(v["steps"])} for d, v in daily.items()]
    }
    values, bad, undated = fitbit_activity.series(body, "steps")
    assert len(values) == 8 and not bad and not undated

    sleep = generated_sleep(AFTERNOON)
    assert len(sleep) == 7 and sleep[-1]["dateOfSleep"] == "2026-12-01"
    signals = [fitbit.normalise(log, CONN, ZONE) for log in sleep]
    assert all(s.end_time.ToDatetime(UTC) <= AFTERNOON for s in signals)
    assert all(300 <= s.sleep.asleep_minutes <= 510 for s in signals)
    # At 01:00 last night's sleep is still going on: not served yet.
    assert generated_sleep(AFTERNOON.replace(hour=1))[-1]["dateOfSleep"] == "2026-11-30"

    workouts = [
        fitbit_activity.normalise_workout(a, CONN, ZONE) for a in generated_activities(AFTERNOON)
    ]
    assert workouts and all(w.end_time.ToDatetime(UTC) <= AFTERNOON for w in workouts)
    assert {w.workout.activity for w in workouts} <= {"walk", "run"}
    assert user_zone({"user": {"offsetFromUTCMillis": 3_600_000}}).utcoffset(None) == timedelta(
        hours=1
    )


def test_generated_calendar_has_a_meeting_one_to_two_hours_ahead() -> None:
    events = generated_calendar(AFTERNOON)
    assert generated_calendar(AFTERNOON) == events
    signals = [google_calendar.normalise(e, CONN) for e in events]
    days = {s.start_time.ToDatetime(UTC).astimezone(ZONE).date().isoformat() for s in signals}
    assert days == {"2026-11-30", "2026-12-01", "2026-12-02", "2026-12-03", "2026-12-04"}
    ahead = [
        s.start_time.ToDatetime(UTC) - AFTERNOON
        for s in signals
        if s.calendar_event.busy and s.start_time.ToDatetime(UTC) > AFTERNOON
    ]
    assert timedelta(hours=1) <= min(ahead) <= timedelta(hours=2)
    # The meeting ahead moves with the hour: a new version of the same event.
    moved = {e["id"]: e for e in generated_calendar(AFTERNOON + timedelta(hours=1))}
    planning = next(e for e in events if e["id"].endswith("planning"))
    assert moved[planning["id"]]["start"] != planning["start"]
    assert moved[planning["id"]]["updated"] != planning["updated"]
    lunch = next(s for s in signals if s.calendar_event.event_id.endswith("lunch"))
    assert not lunch.calendar_event.busy

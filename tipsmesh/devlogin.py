"""Signing in to a local mesh without a Google or Apple account, and its demo user.

``tips up`` runs a development identity provider per provider
(``tipsmesh.devidp``: discovery, JWKS and ID tokens in Google's and Apple's
wire formats) and points the auth service at them. ``sign_in`` does what an
app does: gets an ID token for a fresh nonce from the provider (here its
dev-only ``/dev/id-token``, standing in for the provider's own sign-in
screen) and exchanges it at ``POST /v1/sessions:signIn`` through the
gateway; the answer holds the mesh's access and refresh tokens.
``seed_demo`` gives the ``demo`` user granted consents and a week of
signals; `tips up` runs it once per run dir (``demo.json`` records it).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tipsmesh.devidp import Login

PROVIDERS = {"google": "IDENTITY_PROVIDER_GOOGLE", "apple": "IDENTITY_PROVIDER_APPLE"}
# The one client id the development providers issue ID tokens for.
DEV_CLIENT_ID = "tips-dev-app"
DEMO_USER = "demo"
DEMO_CONSENTS = (
    "calendar-data-for-tips",
    "fitness-data-for-tips",
    "sleep-data-for-tips",
    "push-notifications",
)


class LoginError(RuntimeError):
    """Signing in failed; the message says where."""


def subject_of(name: str) -> str:
    """The provider subject of a development user named ``name``."""
    return Login.dev_user(name).subject


async def sign_in(
    gateway_url: str, provider_url: str, provider: str, name: str, *, device: str = "tips login"
) -> dict[str, Any]:
    """The sign-in answer (``accessToken``, ``refreshToken``, ``user``, ...) for ``name``."""
    raw_nonce = secrets.token_urlsafe(16)
    # Apple's SDK is given SHA-256(raw nonce); Google's the raw nonce (docs/auth.md).
    nonce = raw_nonce if provider == "google" else hashlib.sha256(raw_nonce.encode()).hexdigest()
    async with httpx.AsyncClient(timeout=20, trust_env=False) as http:
        minted = await http.post(
            f"{provider_url}/dev/id-token",
            json={"subject": subject_of(name), "nonce": nonce, "email": Login.dev_user(name).email},
        )
        if minted.status_code != 200:
            raise LoginError(f"the development {provider} provider answered {minted.status_code}")
        body = {
            "provider": PROVIDERS[provider],
            "idToken": minted.json()["id_token"],
            "nonce": raw_nonce,
            "deviceName": device,
            "platform": "PLATFORM_WEB",
        }
        answer = await http.post(f"{gateway_url}/v1/sessions:signIn", json=body)
    if answer.status_code != 200:
        raise LoginError(f"sign-in answered {answer.status_code}: {answer.text[:300]}")
    result: dict[str, Any] = answer.json()
    return result


def _week_of_signals(now: datetime) -> list[dict[str, Any]]:
    """Seven days of steps and sleep, ending yesterday."""
    signals = []
    for days_ago in range(7, 0, -1):
        day = (now - timedelta(days=days_ago)).replace(hour=0, minute=0, second=0, microsecond=0)
        steps_start, steps_end = day + timedelta(hours=8), day + timedelta(hours=20)
        sleep_start, sleep_end = day - timedelta(hours=1), day + timedelta(hours=6, minutes=30)
        signals.append(
            {
                "clientSignalId": f"demo-steps-{day:%Y%m%d}",
                "kind": "SIGNAL_KIND_STEPS",
                "source": "SIGNAL_SOURCE_PHONE",
                "startTime": f"{steps_start:%Y-%m-%dT%H:%M:%SZ}",
                "endTime": f"{steps_end:%Y-%m-%dT%H:%M:%SZ}",
                "steps": {"count": 4000 + 900 * days_ago},
            }
        )
        signals.append(
            {
                "clientSignalId": f"demo-sleep-{day:%Y%m%d}",
                "kind": "SIGNAL_KIND_SLEEP",
                "source": "SIGNAL_SOURCE_PHONE",
                "startTime": f"{sleep_start:%Y-%m-%dT%H:%M:%SZ}",
                "endTime": f"{sleep_end:%Y-%m-%dT%H:%M:%SZ}",
                "sleep": {"asleepMinutes": 380 + 10 * days_ago},
            }
        )
    return signals


def load_demo(marker: Path) -> dict[str, Any] | None:
    """What ``seed_demo`` recorded in ``marker``, if it ran."""
    try:
        loaded: dict[str, Any] = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return loaded


async def seed_demo(gateway_url: str, provider_urls: Mapping[str, str]) -> dict[str, Any]:
    """Sign the demo user in, grant its consents and ingest a week of signals."""
    signed = await sign_in(
        gateway_url, provider_urls["google"], "google", DEMO_USER, device="tips up (demo)"
    )
    headers = {"Authorization": f"Bearer {signed['accessToken']}"}
    async with httpx.AsyncClient(
        base_url=gateway_url, headers=headers, timeout=30, trust_env=False
    ) as http:
        for consent in DEMO_CONSENTS:
            granted = await http.post(
                f"/v1/users/me/consents/{consent}:grant",
                json={"textVersion": "v1", "source": "CONSENT_SOURCE_APP"},
            )
            if granted.status_code != 200:
                raise LoginError(f"granting {consent} answered {granted.status_code}")
        ingested = await http.post(
            "/v1/users/me/signals:batchIngest",
            json={"signals": _week_of_signals(datetime.now(UTC))},
        )
        if ingested.status_code != 200:
            raise LoginError(f"seeding signals answered {ingested.status_code}")
        results = ingested.json().get("results", [])
        refused = [r for r in results if r.get("outcome") == "INGEST_OUTCOME_REJECTED"]
        if refused:
            raise LoginError(f"seeding signals: {len(refused)} rejected: {refused[0]}")
    return {"user": signed["user"], "consents": list(DEMO_CONSENTS), "signals": len(results)}

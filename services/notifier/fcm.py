"""Push through Firebase Cloud Messaging HTTP v1, for every platform.

``POST {base}/v1/projects/{project}/messages:send`` with
``Authorization: Bearer <OAuth 2.0 access token>`` and the documented
``{"message": {"token", "notification", "data", "android", "apns"}}`` body.
iOS installs are reached through FCM's APNs bridge (the app registers its
FCM registration token, not the raw APNs token), and web installs through
FCM's Web Push bridge, so one protocol serves all three platforms.

The access token comes from a Google service-account key: a JWT signed with
its RSA key (RS256, by joserfc, the mesh's one JOSE library) is exchanged at
its ``token_uri`` (RFC 7523 JWT bearer grant) for a token cached until
shortly before it expires.

Outcomes per device (FCM's documented error codes): 200 sent; 404 or
``UNREGISTERED`` the token is dead (the caller deletes the device); 429, 5xx
and network errors retried later (``Retry-After`` honoured); 401 drops the
cached access token and retries; other 4xx fail for good. Tokens never
appear in logs or errors.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from services.notifier.settings import NotifierSettings

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ALG = "RS256"
ASSERTION_SECONDS = 3600  # Google accepts at most an hour
_EXPIRY_MARGIN = 60.0


@dataclass(frozen=True)
class Outcome:
    """One delivery try: ``ok``, ``retry`` (transient), ``gone`` (dead token), ``fail``."""

    kind: Literal["ok", "retry", "gone", "fail"]
    detail: str = ""
    retry_after: float | None = None


class FcmConfigError(Exception):
    """The service-account key is missing or unusable (says which part, not its value)."""


class ServiceAccountTokens:
    """OAuth 2.0 access tokens for FCM from a service-account key, cached."""

    def __init__(self, settings: NotifierSettings, http: httpx.AsyncClient) -> None:
        raw = settings.notifier_fcm_credentials.get_secret_value()
        try:
            key = json.loads(raw)
            self._email = str(key["client_email"])
            self._key_id = str(key.get("private_key_id", ""))
            private = RSAKey.import_key(str(key["private_key"]))
            token_uri = settings.notifier_fcm_token_url or str(key["token_uri"])
        except (ValueError, KeyError, TypeError, AttributeError, JoseError) as exc:
            raise FcmConfigError(
                f"TIPS_NOTIFIER_FCM_CREDENTIALS is not a service-account key ({type(exc).__name__})"
            ) from None
        if not private.is_private:
            raise FcmConfigError("TIPS_NOTIFIER_FCM_CREDENTIALS: private_key is not a private key")
        self._private = private
        self._token_uri = token_uri
        self._http = http
        self._token = ""
        self._expires = 0.0
        self._lock = asyncio.Lock()

    def _assertion(self, now: float) -> str:
        """The RS256-signed JWT Google's token endpoint exchanges for an access token
        (RFC 7523; claims as Google documents for service accounts)."""
        header = {"alg": ALG, "typ": "JWT", **({"kid": self._key_id} if self._key_id else {})}
        claims = {
            "iss": self._email,
            "scope": SCOPE,
            "aud": self._token_uri,
            "iat": int(now),
            "exp": int(now) + ASSERTION_SECONDS,
        }
        return jwt.encode(header, claims, self._private, algorithms=[ALG])

    async def token(self) -> str:
        async with self._lock:
            now = time.time()
            if self._token and now < self._expires - _EXPIRY_MARGIN:
                return self._token
            response = await self._http.post(
                self._token_uri,
                data={"grant_type": JWT_BEARER, "assertion": self._assertion(now)},
            )
            if response.status_code != 200:
                raise httpx.HTTPStatusError(
                    f"token endpoint answered {response.status_code}",
                    request=response.request,
                    response=response,
                )
            body = response.json()
            self._token = str(body["access_token"])
            self._expires = now + float(body.get("expires_in", 3600))
            return self._token

    def invalidate(self) -> None:
        self._token = ""


def message_body(
    token: str, title: str, body: str, data: dict[str, str], ttl_seconds: int | None
) -> dict[str, Any]:
    """The documented FCM v1 ``Message`` for one device."""
    message: dict[str, Any] = {
        "token": token,
        "notification": {"title": title, "body": body},
        "data": data,
    }
    if ttl_seconds is not None:
        # A stale tip is worse than none: the push services drop it after this.
        message["android"] = {"ttl": f"{ttl_seconds}s"}
        message["apns"] = {"headers": {"apns-expiration": str(int(time.time()) + ttl_seconds)}}
        message["webpush"] = {"headers": {"TTL": str(ttl_seconds)}}
    return {"message": message}


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None


def _error_code(response: httpx.Response) -> str:
    """FCM's ``errorCode`` (UNREGISTERED, ...) or the status name."""
    try:
        error = response.json().get("error", {})
    except ValueError:
        return ""
    for detail in error.get("details", []) or []:
        if isinstance(detail, dict) and detail.get("errorCode"):
            return str(detail["errorCode"])
    return str(error.get("status", ""))


class FcmSender:
    def __init__(
        self, settings: NotifierSettings, http: httpx.AsyncClient, tokens: ServiceAccountTokens
    ) -> None:
        base = settings.notifier_fcm_base_url.rstrip("/")
        self._url = f"{base}/v1/projects/{settings.notifier_fcm_project_id}/messages:send"
        self._http = http
        self._tokens = tokens

    async def send(self, payload: dict[str, Any]) -> Outcome:
        try:
            bearer = await self._tokens.token()
            response = await self._http.post(
                self._url, json=payload, headers={"Authorization": f"Bearer {bearer}"}
            )
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            return Outcome("retry", f"FCM not reachable: {type(exc).__name__}")
        status = response.status_code
        if status == 200:
            return Outcome("ok")
        code = _error_code(response)
        if status == 404 or code == "UNREGISTERED":
            return Outcome("gone", f"FCM {status} {code or 'NOT_FOUND'}")
        if status == 401:
            self._tokens.invalidate()
            return Outcome("retry", "FCM 401: access token refused", 0.0)
        if status == 429 or status >= 500:
            return Outcome("retry", f"FCM {status} {code}".strip(), _retry_after(response))
        return Outcome("fail", f"FCM {status} {code}".strip())

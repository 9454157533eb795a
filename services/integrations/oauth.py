"""OAuth 2.0 authorization code flow with PKCE (RFC 6749, RFC 7636), client side.

authlib builds the authorization URI, the token request bodies and the S256
challenge; the HTTP goes through the service's ``httpx.AsyncClient`` so
timeouts and errors are ours. The client authenticates with HTTP Basic
(``client_secret_basic``), which Google and Fitbit both accept.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from authlib.common.security import generate_token  # type: ignore[import-untyped]
from authlib.oauth2.rfc6749 import parameters  # type: ignore[import-untyped]
from authlib.oauth2.rfc7636 import create_s256_code_challenge  # type: ignore[import-untyped]

from services.integrations.connectors.http import GrantRevoked, ProviderError, ProviderUnavailable


@dataclass(frozen=True)
class TokenSet:
    """Tokens of one grant. Only ever stored sealed (``vault``)."""

    access_token: str
    refresh_token: str
    expire_time: datetime | None
    scope: str = ""
    token_type: str = "Bearer"

    def to_bytes(self) -> bytes:
        data = asdict(self)
        data["expire_time"] = self.expire_time.isoformat() if self.expire_time else None
        return json.dumps(data).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> TokenSet:
        data = json.loads(raw)
        expire = data.get("expire_time")
        data["expire_time"] = datetime.fromisoformat(expire) if expire else None
        return cls(**data)

    def __repr__(self) -> str:  # never print tokens, even in a traceback's locals
        return f"TokenSet(expire_time={self.expire_time!r}, scope={self.scope!r})"


def new_state() -> str:
    return str(generate_token(43))


def new_verifier() -> str:
    # RFC 7636: 43 to 128 characters of the unreserved alphabet.
    return str(generate_token(64))


def authorization_uri(
    authorize_url: str,
    *,
    client_id: str,
    redirect_uri: str,
    scopes: Sequence[str],
    state: str,
    verifier: str,
    extra: Mapping[str, str],
) -> str:
    uri: str = parameters.prepare_grant_uri(
        authorize_url,
        client_id,
        "code",
        redirect_uri=redirect_uri,
        scope=" ".join(scopes),
        state=state,
        code_challenge=create_s256_code_challenge(verifier),
        code_challenge_method="S256",
        **dict(extra),
    )
    return uri


def _token_set(data: Mapping[str, Any], now: datetime, previous_refresh: str = "") -> TokenSet:
    access = data.get("access_token")
    if not isinstance(access, str) or not access:
        raise ProviderUnavailable("the token endpoint answered without an access token")
    expires_in = data.get("expires_in")
    expire = (
        now + timedelta(seconds=int(expires_in)) if isinstance(expires_in, int | float) else None
    )
    refresh = data.get("refresh_token")
    return TokenSet(
        access_token=access,
        # Providers may omit the refresh token on refresh: the old one stays valid.
        refresh_token=refresh if isinstance(refresh, str) and refresh else previous_refresh,
        expire_time=expire,
        scope=str(data.get("scope") or ""),
        token_type=str(data.get("token_type") or "Bearer"),
    )


async def _post_token(
    http: httpx.AsyncClient, token_url: str, client_id: str, client_secret: str, body: str
) -> Mapping[str, Any]:
    try:
        response = await http.post(
            token_url,
            content=body,
            auth=httpx.BasicAuth(client_id, client_secret),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json",
            },
        )
    except httpx.HTTPError as exc:
        raise ProviderUnavailable(f"token endpoint unreachable: {type(exc).__name__}") from None
    try:
        data = response.json()
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    if response.status_code == 400 and data.get("error") == "invalid_grant":
        raise GrantRevoked("the provider refused the grant (invalid_grant)")
    if response.status_code in (400, 401):
        # Only the OAuth error code: descriptions may echo request values.
        raise ProviderError(f"token endpoint refused the request: {data.get('error', 'unknown')}")
    if response.status_code >= 300:
        raise ProviderUnavailable(f"token endpoint answered HTTP {response.status_code}")
    return data


async def exchange_code(
    http: httpx.AsyncClient,
    token_url: str,
    *,
    client_id: str,
    client_secret: str,
    code: str,
    verifier: str,
    redirect_uri: str,
) -> TokenSet:
    body = parameters.prepare_token_request(
        "authorization_code", code=code, redirect_uri=redirect_uri, code_verifier=verifier
    )
    data = await _post_token(http, token_url, client_id, client_secret, body)
    return _token_set(data, datetime.now(UTC))


async def refresh(
    http: httpx.AsyncClient,
    token_url: str,
    *,
    client_id: str,
    client_secret: str,
    refresh_token: str,
) -> TokenSet:
    if not refresh_token:
        raise GrantRevoked("no refresh token is stored for this grant")
    body = parameters.prepare_token_request("refresh_token", refresh_token=refresh_token)
    data = await _post_token(http, token_url, client_id, client_secret, body)
    return _token_set(data, datetime.now(UTC), refresh_token)


async def revoke(http: httpx.AsyncClient, revoke_url: str, token: str) -> bool:
    """Best-effort revocation (RFC 7009); False when it failed."""
    try:
        response = await http.post(revoke_url, data={"token": token})
    except httpx.HTTPError:
        return False
    return response.status_code < 300

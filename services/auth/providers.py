"""OpenID Connect providers (Google, Apple): discovery, keys, ID-token checks.

Each provider is found through its issuer's discovery document
(``<issuer>/.well-known/openid-configuration``), fetched over HTTP and cached
with its JWK Set. A token naming an unknown ``kid`` refreshes the keys (the
provider rotated), at most once per ``min_refresh`` seconds and with one
fetch shared by concurrent callers, so garbage ``kid``s cannot make us
hammer the provider. A failed refresh keeps the keys already cached.

An ID token is accepted only when every check passes: ``alg`` is RS256 or
ES256 (never ``none`` or HMAC) and fits its key's type, the signature
verifies with the provider key named by ``kid``, ``iss`` is the provider,
``aud`` one of our client ids (``azp`` too when ``aud`` lists several),
``exp`` not past and ``iat``/``nbf`` not in the future (with leeway), ``iat``
not older than the maximum age, ``nonce`` the expected value, and
``email_verified`` true when the token carries an email.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

from kernel.errors import Unauthenticated, Unavailable
from services.auth.crypto import constant_time_equal
from services.auth.settings import AuthSettings
from tips.auth.v1 import identity_pb2

log = logging.getLogger(__name__)

GOOGLE = identity_pb2.IDENTITY_PROVIDER_GOOGLE
APPLE = identity_pb2.IDENTITY_PROVIDER_APPLE
# Signature algorithms accepted on provider ID tokens, with the key type each needs.
ID_TOKEN_ALGORITHMS: dict[str, str] = {"RS256": "RSA", "ES256": "EC"}
MAX_ID_TOKEN_LENGTH = 16 * 1024
_MAX_DOCUMENT_BYTES = 256 * 1024
ProviderKey = RSAKey | ECKey


class ProviderError(Exception):
    """A discovery document or key set could not be fetched or read."""


def invalid_token(message: str, check: str) -> Unauthenticated:
    """The error for an ID token that failed ``check`` (never echoes the token)."""
    return Unauthenticated(
        f"the ID token was rejected: {message}",
        reason="ID_TOKEN_INVALID",
        metadata={"check": check},
    )


@dataclass(frozen=True)
class IdClaims:
    """What a verified ID token says about the user."""

    subject: str
    email: str
    email_verified: bool
    name: str
    expire_time: float


@dataclass
class _Cache:
    discovery: Mapping[str, Any]
    keys: dict[str, ProviderKey]
    fetched_at: float


class Provider:
    """One OIDC provider: its configuration, keys and checks."""

    def __init__(
        self,
        provider: int,
        *,
        issuer: str,
        client_ids: Sequence[str],
        web_client_id: str,
        web_client_secret: str,
        http: httpx.AsyncClient,
        cache_seconds: float,
        min_refresh_seconds: float,
        leeway_seconds: int,
        max_age_seconds: int,
    ) -> None:
        self.provider = provider
        self.issuer = issuer.rstrip("/")
        self.client_ids = frozenset(client_ids)
        self.web_client_id = web_client_id
        self.web_client_secret = web_client_secret
        self._http = http
        self.cache_seconds = cache_seconds
        self.min_refresh_seconds = min_refresh_seconds
        self.leeway = leeway_seconds
        self.max_age = max_age_seconds
        self._cache: _Cache | None = None
        self._last_attempt = -1e18
        self._lock = asyncio.Lock()
        # Google documents both forms of its issuer.
        self.issuers = frozenset({self.issuer})
        if self.issuer == "https://accounts.google.com":
            self.issuers = frozenset({self.issuer, "accounts.google.com"})

    @property
    def name(self) -> str:
        return "Apple" if self.provider == APPLE else "Google"

    # --- discovery and keys ---------------------------------------------------

    async def _get_json(self, url: str) -> Mapping[str, Any]:
        try:
            response = await self._http.get(url)
        except httpx.HTTPError as exc:
            raise ProviderError(f"GET {url} failed: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise ProviderError(f"GET {url} answered {response.status_code}")
        if len(response.content) > _MAX_DOCUMENT_BYTES:
            raise ProviderError(f"GET {url} answered a document over {_MAX_DOCUMENT_BYTES} bytes")
        try:
            data = response.json()
        except ValueError:
            raise ProviderError(f"GET {url} answered something that is not JSON") from None
        if not isinstance(data, dict):
            raise ProviderError(f"GET {url} answered JSON that is not an object")
        return data

    async def _fetch(self) -> _Cache:
        discovery = await self._get_json(f"{self.issuer}/.well-known/openid-configuration")
        if str(discovery.get("issuer", "")).rstrip("/") != self.issuer:
            raise ProviderError("the discovery document names another issuer")
        jwks_uri = discovery.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri:
            raise ProviderError("the discovery document has no jwks_uri")
        document = await self._get_json(jwks_uri)
        return _Cache(discovery, parse_jwks(document), time.monotonic())

    async def _refresh(self, *, force: bool) -> _Cache | None:
        """Refetch when stale (or ``force``), within the refresh guard."""
        async with self._lock:
            now = time.monotonic()
            cache = self._cache
            if cache is not None and not force and now - cache.fetched_at < self.cache_seconds:
                return cache
            if now - self._last_attempt < self.min_refresh_seconds:
                return cache
            self._last_attempt = now
            try:
                self._cache = await self._fetch()
            except ProviderError as exc:
                log.warning(
                    "provider keys refresh failed", extra={"provider": self.name, "error": str(exc)}
                )
            return self._cache

    async def discovery(self) -> Mapping[str, Any]:
        cache = await self._refresh(force=False)
        if cache is None:
            raise Unavailable(
                f"the {self.name} sign-in configuration could not be fetched",
                reason="PROVIDER_UNAVAILABLE",
            )
        return cache.discovery

    async def key_for(self, kid: str) -> ProviderKey | None:
        cache = await self._refresh(force=False)
        if cache is not None and kid in cache.keys:
            return cache.keys[kid]
        cache = await self._refresh(force=True)
        if cache is None:
            raise Unavailable(
                f"the {self.name} signing keys could not be fetched",
                reason="PROVIDER_UNAVAILABLE",
            )
        return cache.keys.get(kid)

    # --- ID tokens ------------------------------------------------------------

    async def verify(self, id_token: str, expected_nonce: str) -> IdClaims:
        """The claims of ``id_token`` after every check; Unauthenticated otherwise."""
        if not id_token or len(id_token) > MAX_ID_TOKEN_LENGTH:
            raise invalid_token("it is empty or too long", "format")
        try:
            obj = jws.extract_compact(id_token.encode("ascii"))
            header = obj.headers()
        except (JoseError, ValueError, UnicodeError):
            raise invalid_token("it is not a well-formed JWT", "format") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ID_TOKEN_ALGORITHMS:
            raise invalid_token(
                "its algorithm is not accepted; expected one of "
                + ", ".join(sorted(ID_TOKEN_ALGORITHMS)),
                "alg",
            )
        if "crit" in header or "b64" in header:
            raise invalid_token("it uses JWS extensions that are not accepted", "header")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise invalid_token("it names no signing key (kid)", "kid")
        key = await self.key_for(kid)
        if key is None:
            raise invalid_token(f"its signing key is not one of {self.name}'s", "kid")
        if key.key_type != ID_TOKEN_ALGORITHMS[alg]:
            raise invalid_token("its algorithm does not fit its signing key", "alg")
        try:
            verified = jws.deserialize_compact(id_token, key, algorithms=[alg])
            claims = json.loads(verified.payload)
        except (JoseError, ValueError):
            raise invalid_token("its signature does not verify", "signature") from None
        if not isinstance(claims, dict):
            raise invalid_token("its payload is not a JSON object", "format")
        return self.check_claims(claims, expected_nonce, time.time())

    def check_claims(self, claims: Mapping[str, Any], expected_nonce: str, now: float) -> IdClaims:
        if claims.get("iss") not in self.issuers:
            raise invalid_token(f"it was not issued by {self.name}", "iss")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not any(isinstance(a, str) and a in self.client_ids for a in audiences):
            raise invalid_token("it was issued for another client (aud)", "aud")
        if len(audiences) > 1 and claims.get("azp") not in self.client_ids:
            raise invalid_token("it was issued for another client (azp)", "aud")
        exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf", 0)
        if not _number(exp) or not _number(iat) or not _number(nbf):
            raise invalid_token("it lacks exp or iat, or one is not a number", "exp")
        assert isinstance(exp, int | float) and isinstance(iat, int | float)
        assert isinstance(nbf, int | float)
        if exp + self.leeway < now:
            raise invalid_token("it has expired", "exp")
        if iat - self.leeway > now or nbf - self.leeway > now:
            raise invalid_token("it is not valid yet", "iat")
        if iat + self.max_age < now:
            raise invalid_token("it was issued too long ago", "iat")
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not constant_time_equal(nonce, expected_nonce):
            raise invalid_token("its nonce is not the one of this sign-in", "nonce")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not 0 < len(subject) <= 255:
            raise invalid_token("it has no subject", "sub")
        email = claims.get("email")
        email = email if isinstance(email, str) else ""
        # Apple sends "true"/"false" strings, Google booleans.
        verified = claims.get("email_verified") in (True, "true")
        if email and not verified:
            raise invalid_token("its email address is not verified by the provider", "email")
        name = claims.get("name")
        return IdClaims(
            subject=subject,
            email=email,
            email_verified=bool(email) and verified,
            name=name if isinstance(name, str) else "",
            expire_time=float(exp),
        )

    # --- web flow -----------------------------------------------------------------

    async def authorization_uri(
        self, *, redirect_uri: str, state: str, nonce: str, challenge: str, login_hint: str
    ) -> str:
        discovery = await self.discovery()
        endpoint = discovery.get("authorization_endpoint")
        if not isinstance(endpoint, str) or not endpoint:
            raise Unavailable(f"{self.name} publishes no authorization endpoint")
        params = {
            "response_type": "code",
            "client_id": self.web_client_id,
            "redirect_uri": redirect_uri,
            "scope": "openid email" + (" profile" if self.provider == GOOGLE else " name"),
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        if self.provider == APPLE:
            # Apple returns name and email scopes only with a form post.
            params["response_mode"] = "form_post"
        if login_hint:
            params["login_hint"] = login_hint
        separator = "&" if "?" in endpoint else "?"
        return f"{endpoint}{separator}{urlencode(params)}"

    async def exchange_code(self, *, code: str, redirect_uri: str, verifier: str) -> str:
        """The ID token the token endpoint returns for ``code`` (RFC 6749 4.1.3, RFC 7636)."""
        discovery = await self.discovery()
        endpoint = discovery.get("token_endpoint")
        if not isinstance(endpoint, str) or not endpoint:
            raise Unavailable(f"{self.name} publishes no token endpoint")
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": self.web_client_id,
            "code_verifier": verifier,
        }
        if self.web_client_secret:
            form["client_secret"] = self.web_client_secret
        try:
            response = await self._http.post(endpoint, data=form)
        except httpx.HTTPError as exc:
            raise Unavailable(
                f"the {self.name} token endpoint is unreachable ({type(exc).__name__})",
                reason="PROVIDER_UNAVAILABLE",
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            raise Unauthenticated(
                f"{self.name} refused the authorization code"
                + (f" ({error})" if isinstance(error, str) and error.isidentifier() else ""),
                reason="AUTHORIZATION_CODE_REJECTED",
            )
        id_token = body.get("id_token")
        if not isinstance(id_token, str):
            raise Unauthenticated(
                f"{self.name} returned no ID token", reason="AUTHORIZATION_CODE_REJECTED"
            )
        return id_token


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_jwks(document: Mapping[str, Any]) -> dict[str, ProviderKey]:
    """The RSA and P-256 signing keys of a JWK Set, by kid (others skipped)."""
    keys = document.get("keys")
    if not isinstance(keys, list):
        raise ProviderError("the JWK Set has no 'keys' array")
    parsed: dict[str, ProviderKey] = {}
    for entry in keys[:64]:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        if entry.get("use") not in (None, "sig"):
            continue
        public = {k: v for k, v in entry.items() if k in ("kty", "crv", "x", "y", "n", "e", "kid")}
        try:
            if entry.get("kty") == "RSA":
                parsed[entry["kid"]] = RSAKey.import_key(public)
            elif entry.get("kty") == "EC" and entry.get("crv") == "P-256":
                parsed[entry["kid"]] = ECKey.import_key(public)
        except (JoseError, ValueError, TypeError):
            log.warning("provider JWK %r is malformed; skipped", entry["kid"])
    return parsed


class Providers:
    """The configured providers, sharing one HTTP client."""

    def __init__(self, settings: AuthSettings) -> None:
        self._http = httpx.AsyncClient(
            timeout=settings.auth_provider_http_timeout_seconds, follow_redirects=False
        )
        common: dict[str, Any] = {
            "http": self._http,
            "cache_seconds": settings.auth_provider_jwks_cache_seconds,
            "min_refresh_seconds": settings.auth_provider_jwks_min_refresh_seconds,
            "leeway_seconds": settings.jwt_leeway_seconds,
            "max_age_seconds": settings.auth_id_token_max_age_seconds,
        }
        self.by_id: dict[int, Provider] = {
            GOOGLE: Provider(
                GOOGLE,
                issuer=settings.auth_google_issuer,
                client_ids=settings.auth_google_client_ids,
                web_client_id=settings.auth_google_web_client_id,
                web_client_secret=settings.auth_google_web_client_secret.get_secret_value(),
                **common,
            ),
            APPLE: Provider(
                APPLE,
                issuer=settings.auth_apple_issuer,
                client_ids=settings.auth_apple_client_ids,
                web_client_id=settings.auth_apple_web_client_id,
                web_client_secret=settings.auth_apple_web_client_secret.get_secret_value(),
                **common,
            ),
        }

    def get(self, provider: int) -> Provider | None:
        return self.by_id.get(provider)

    async def close(self) -> None:
        await self._http.aclose()

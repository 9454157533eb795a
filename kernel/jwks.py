"""The JWK Set access tokens are verified with, at the edge and in every service.

Fetched, parsed, cached.

Keys come from a ``KeySource`` (an HTTP JWKS URL, or the auth service's
``GetJwks`` over gRPC). ``KeyCache`` keeps the parsed keys by ``kid`` and
refreshes them when they are older than the cache lifetime or a token names
an unknown ``kid``, with three guards:

- at most one fetch per ``min_refresh`` seconds, so garbage ``kid``s (or a
  down auth service with a cold cache) cannot turn requests into fetches;
- concurrent refreshes share one fetch (single flight);
- a failed refresh keeps the keys already cached (stale beats closed), and
  with no keys at all every token fails closed with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import grpc
import httpx
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey

from kernel.errors import Unavailable
from tips.auth.v1 import auth_service_pb2, auth_service_pb2_grpc

log = logging.getLogger(__name__)

# Algorithms the auth service signs with, by key type and curve. Anything
# else (none, HS*, RS*, other curves) never verifies at the edge.
ALGORITHMS_BY_CURVE: dict[tuple[str, str], frozenset[str]] = {
    ("EC", "P-256"): frozenset({"ES256"}),
    # "Ed25519" is RFC 9864's fully specified name for EdDSA over Ed25519.
    ("OKP", "Ed25519"): frozenset({"EdDSA", "Ed25519"}),
}
ALLOWED_ALGORITHMS: frozenset[str] = frozenset().union(*ALGORITHMS_BY_CURVE.values())
# Only public members are imported: a private `d` in a published set is
# someone's mistake, never something to sign with here.
_PUBLIC_MEMBERS = ("kty", "crv", "x", "y", "kid")
_MAX_JWKS_BYTES = 256 * 1024
_MAX_KEYS = 64


class JwksFetchError(Exception):
    """The key set could not be fetched or read; the message says why."""


@dataclass(frozen=True)
class VerifyKey:
    """A parsed public key and the algorithms it may verify."""

    kid: str
    key: ECKey | OKPKey
    algorithms: frozenset[str]
    # RFC 7638 thumbprint: tells a changed key under the same kid.
    thumbprint: str


class KeySource(Protocol):
    """Where a JWK Set comes from."""

    description: str

    async def fetch(self) -> Mapping[str, Any]:
        """The JWK Set document ``{"keys": [...]}``; JwksFetchError on failure."""
        ...

    async def close(self) -> None: ...


def parse_jwks(document: Mapping[str, Any]) -> dict[str, VerifyKey]:
    """The usable signing keys of a JWK Set, by ``kid``.

    Keys we cannot use (no kid, other key types or curves, ``use`` other than
    ``sig``, malformed points) are skipped with a warning, so one bad entry
    does not take the others down.
    """
    keys = document.get("keys")
    if not isinstance(keys, list):
        raise JwksFetchError("the JWK Set has no 'keys' array")
    parsed: dict[str, VerifyKey] = {}
    for entry in keys[:_MAX_KEYS]:
        key = _parse_key(entry)
        if key is not None:
            parsed[key.kid] = key
    return parsed


def _parse_key(entry: object) -> VerifyKey | None:
    if not isinstance(entry, dict):
        log.warning("JWK Set entry is not an object; skipped")
        return None
    kid = entry.get("kid")
    if not isinstance(kid, str) or not kid:
        log.warning("JWK without a kid; skipped")
        return None
    curve = (str(entry.get("kty", "")), str(entry.get("crv", "")))
    allowed = ALGORITHMS_BY_CURVE.get(curve)
    if allowed is None:
        log.warning("JWK %r has unsupported type/curve %s/%s; skipped", kid, *curve)
        return None
    if entry.get("use") not in (None, "", "sig"):
        log.warning("JWK %r is not a signing key; skipped", kid)
        return None
    alg = entry.get("alg")
    if alg:
        # A key that names its algorithm verifies that one only.
        allowed = allowed & {alg}
        if not allowed:
            log.warning("JWK %r names algorithm %r, not usable with its curve; skipped", kid, alg)
            return None
    public = {name: entry[name] for name in _PUBLIC_MEMBERS if entry.get(name)}
    try:
        key: ECKey | OKPKey = (
            ECKey.import_key(public) if curve[0] == "EC" else OKPKey.import_key(public)
        )
    except (JoseError, ValueError, TypeError) as exc:
        log.warning("JWK %r is malformed (%s); skipped", kid, type(exc).__name__)
        return None
    return VerifyKey(kid=kid, key=key, algorithms=frozenset(allowed), thumbprint=key.thumbprint())


def _fingerprint(keys: Mapping[str, VerifyKey]) -> dict[str, tuple[str, frozenset[str]]]:
    return {kid: (k.thumbprint, k.algorithms) for kid, k in keys.items()}


class HttpKeySource:
    """A JWK Set served at an HTTP(S) URL."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.description = url
        # No redirects: the key set must come from exactly the configured URL.
        self._client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)

    async def fetch(self) -> Mapping[str, Any]:
        try:
            response = await self._client.get(self.url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise JwksFetchError(f"GET {self.url} failed: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise JwksFetchError(f"GET {self.url} answered HTTP {response.status_code}")
        if len(response.content) > _MAX_JWKS_BYTES:
            raise JwksFetchError(f"GET {self.url} returned more than {_MAX_JWKS_BYTES} bytes")
        try:
            document = response.json()
        except ValueError:
            raise JwksFetchError(f"GET {self.url} did not return JSON") from None
        if not isinstance(document, dict):
            raise JwksFetchError(f"GET {self.url} did not return a JSON object")
        return document

    async def close(self) -> None:
        await self._client.aclose()


class GrpcKeySource:
    """The auth service's ``tips.auth.v1.AuthService/GetJwks``."""

    description = "tips.auth.v1.AuthService/GetJwks"

    def __init__(self, channel: Callable[[], grpc.aio.Channel], timeout_s: float) -> None:
        # The channel belongs to the gateway's Upstreams, which closes it.
        self._channel = channel
        self._timeout_s = timeout_s

    async def fetch(self) -> Mapping[str, Any]:
        stub = auth_service_pb2_grpc.AuthServiceStub(self._channel())
        try:
            reply = await stub.GetJwks(auth_service_pb2.GetJwksRequest(), timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise JwksFetchError(
                    "the auth service does not serve GetJwks yet (UNIMPLEMENTED); "
                    "set TIPS_JWKS_URL or deploy an auth service that publishes its keys"
                ) from None
            raise JwksFetchError(f"{self.description} failed: {exc.code().name}") from None
        keys = [
            {field.name: value for field, value in jwk.ListFields() if value} for jwk in reply.keys
        ]
        return {"keys": keys}

    async def close(self) -> None:
        return None


class KeyCache:
    """Parsed keys by kid, refreshed as the module docstring describes."""

    def __init__(
        self,
        source: KeySource,
        *,
        cache_seconds: float,
        min_refresh_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self._cache_s = cache_seconds
        self._min_refresh_s = min_refresh_seconds
        self._clock = clock
        self._keys: dict[str, VerifyKey] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last fetch, successful or not
        self._last_error = ""
        self._inflight: asyncio.Task[None] | None = None
        # Bumped whenever the key set changes; callers caching results of
        # verification drop them when it moves.
        self.generation = 0

    async def key_for(self, kid: str) -> VerifyKey | None:
        """The key named ``kid``, refreshing first when due; None if unknown.

        Raises Unavailable when no key set was ever fetched.
        """
        now = self._clock()
        stale = self._fetched_at is None or now - self._fetched_at >= self._cache_s
        if stale or kid not in self._keys:
            await self._refresh_if_allowed(now)
        if self._fetched_at is None:
            raise Unavailable(
                f"cannot verify access tokens: no signing keys from {self.source.description}"
                f" ({self._last_error or 'not fetched yet'})",
                reason="AUTH_KEYS_UNAVAILABLE",
                retry_after=timedelta(seconds=max(self._min_refresh_s, 1.0)),
            )
        return self._keys.get(kid)

    async def refresh(self) -> None:
        """Fetch now (single flight); keeps the old keys on failure."""
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._fetch())
        task = self._inflight
        # Shielded: a client that disconnects must not cancel everyone's fetch.
        await asyncio.shield(task)

    async def _refresh_if_allowed(self, now: float) -> None:
        if self._inflight is not None:
            await asyncio.shield(self._inflight)
            return
        if self._attempted_at is not None and now - self._attempted_at < self._min_refresh_s:
            return
        await self.refresh()

    async def _fetch(self) -> None:
        self._attempted_at = self._clock()
        try:
            keys = parse_jwks(await self.source.fetch())
        except JwksFetchError as exc:
            self._last_error = str(exc)
            log.warning("JWK Set refresh failed; keeping %d cached keys: %s", len(self._keys), exc)
            return
        except Exception as exc:  # never let a refresh bug take the cache down
            self._last_error = f"unexpected {type(exc).__name__}"
            log.exception("JWK Set refresh failed unexpectedly; keeping cached keys")
            return
        finally:
            self._inflight = None
        self._install(keys)

    def _install(self, keys: dict[str, VerifyKey]) -> None:
        added = sorted(keys.keys() - self._keys.keys())
        removed = sorted(self._keys.keys() - keys.keys())
        if _fingerprint(keys) != _fingerprint(self._keys):
            self.generation += 1
        self._keys = keys
        self._fetched_at = self._clock()
        self._last_error = ""
        if added or removed:
            log.info(
                "JWK Set from %s: %d keys (added %s, removed %s)",
                self.source.description,
                len(keys),
                added,
                removed,
            )

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def is_fresh(self) -> bool:
        """Whether the keys were fetched within the cache lifetime."""
        return self._fetched_at is not None and self._clock() - self._fetched_at < self._cache_s

    async def close(self) -> None:
        if self._inflight is not None:
            self._inflight.cancel()
        await self.source.close()

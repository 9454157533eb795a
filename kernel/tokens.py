"""Access tokens verified in one place: at the edge and in every service.

``TokenVerifier.verify(authorization)`` turns ``Authorization: Bearer <jwt>``
into a ``Caller`` when all of these hold (docs/edge-auth.md has the full rules):

- the header is ``Bearer <compact JWS>``;
- ``alg`` is one we issue (ES256, EdDSA/Ed25519): never ``none``, HMAC or RSA,
  so a token "signed" with the public key as an HMAC secret fails;
- ``kid`` names a key of the auth service's JWK Set whose type fits ``alg``,
  and the signature verifies with it;
- ``iss`` and ``aud`` are ours, ``exp`` is in the future and ``nbf``/``iat``
  are not (with a small leeway for clock skew), ``sub`` is a user id.

The Caller is ``user=sub``, ``scopes=scope.split()``, ``session=sid`` and
carries the token, so the next hop gets it too and checks it again: no
service trusts a user id it cannot verify. Failures raise ``Unauthenticated``
(reason TOKEN_MISSING, TOKEN_INVALID, TOKEN_EXPIRED, TOKEN_NOT_YET_VALID) or,
when no key set could ever be fetched, ``Unavailable`` (AUTH_KEYS_UNAVAILABLE):
never open. Tokens are never logged or echoed in messages.

A token that passed is remembered until it expires (bounded, dropped when the
key set changes or goes stale), so a repeat costs a dict lookup: a hop pays
one signature check per token, not per call. Session revocation is the edge's
(gateway.auth): it refuses a revoked session's token before it enters the mesh.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import grpc
from joserfc import jws
from joserfc.errors import (
    ClaimError,
    ExpiredTokenError,
    JoseError,
    MissingClaimError,
    UnsupportedAlgorithmError,
)
from joserfc.jwa import JWSAlgModel
from joserfc.jws import JWSRegistry
from joserfc.jwt import JWTClaimsRegistry

from kernel.errors import Unauthenticated
from kernel.identity import Caller
from kernel.jwks import (
    ALLOWED_ALGORITHMS,
    GrpcKeySource,
    HttpKeySource,
    KeyCache,
    KeySource,
)
from kernel.settings import Settings

# Longer headers are refused before any parsing (joserfc's own limits are
# similar); access tokens are well under 1 KiB.
MAX_AUTHORIZATION_LENGTH = 8192
_BEARER = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9_\-.]+) *$")
# Ids travel as gRPC metadata and into `users/{user}` names: no slash,
# whitespace or control characters.
_ID = re.compile(r"^[A-Za-z0-9._~:@+\-]{1,256}$")
# RFC 6749 scope-token characters.
_SCOPE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,128}$")
_ACCEPTED_TYP = frozenset({"jwt", "at+jwt", "application/jwt", "application/at+jwt"})
# Verified tokens remembered (apps send the same token for minutes), so a
# repeat costs a dict lookup instead of a signature check. Only tokens that
# passed every check get in, so garbage cannot fill it.
VERIFIED_CACHE_SIZE = 4096


class _Registry(JWSRegistry):
    """Our allow list, without joserfc's per-call EdDSA deprecation warning."""

    def get_alg(self, name: str) -> JWSAlgModel:
        if name not in ALLOWED_ALGORITHMS or name not in self.algorithms:
            raise UnsupportedAlgorithmError(f"Algorithm of '{name}' is not allowed")
        return self.algorithms[name]


def _invalid(message: str, **metadata: str) -> Unauthenticated:
    return Unauthenticated(message, reason="TOKEN_INVALID", metadata=metadata)


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if authorization is None or not authorization.strip():
        raise Unauthenticated(
            "this route needs an access token: send 'Authorization: Bearer <token>'",
            reason="TOKEN_MISSING",
        )
    if len(authorization) > MAX_AUTHORIZATION_LENGTH:
        raise _invalid("the Authorization header is too long")
    match = _BEARER.match(authorization)
    if match is None:
        raise _invalid("the Authorization header must be 'Bearer <token>' with a JWT")
    return match.group(1)


class ClaimsPolicy:
    """The claim checks, built once from settings."""

    def __init__(self, *, issuer: str, audience: str, leeway_s: int) -> None:
        self.leeway_s = leeway_s
        self._registry = JWTClaimsRegistry(
            leeway=leeway_s,
            iss={"essential": True, "value": issuer},
            # A list `aud` passes when it contains our audience.
            aud={"essential": True, "value": audience},
            exp={"essential": True},
            sub={"essential": True},
        )

    def caller(self, claims: dict[str, Any], token: str | None = None) -> Caller:
        """Check ``claims``; the Caller they describe."""
        try:
            self._registry.validate(claims)
        except ExpiredTokenError:
            raise Unauthenticated("the access token has expired", reason="TOKEN_EXPIRED") from None
        except MissingClaimError as exc:
            raise _invalid(
                f"the access token lacks the {exc.claim!r} claim", claim=exc.claim
            ) from None
        except ClaimError as exc:
            if exc.claim in ("nbf", "iat") and _is_number(claims.get(exc.claim)):
                raise Unauthenticated(
                    f"the access token is not valid yet ({exc.claim} is in the future)",
                    reason="TOKEN_NOT_YET_VALID",
                    metadata={"claim": exc.claim},
                ) from None
            raise _invalid(
                f"the access token's {exc.claim!r} claim is not accepted here", claim=exc.claim
            ) from None
        user = claims["sub"]
        if not _ID.match(user):
            raise _invalid("the access token's 'sub' claim is not a user id", claim="sub")
        scope = claims.get("scope", "")
        if not isinstance(scope, str):
            raise _invalid("the access token's 'scope' claim must be a string", claim="scope")
        scopes = frozenset(scope.split())
        if not all(_SCOPE.match(s) for s in scopes):
            raise _invalid("the access token's 'scope' claim has invalid characters", claim="scope")
        session = claims.get("sid")
        if session is not None and not (isinstance(session, str) and _ID.match(session)):
            raise _invalid("the access token's 'sid' claim is not a session id", claim="sid")
        return Caller(user=user, scopes=scopes, session=session or None, token=token)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class TokenVerifier:
    """Verifies access tokens against a cached JWK Set (see module docstring)."""

    def __init__(self, keys: KeyCache, policy: ClaimsPolicy) -> None:
        self.keys = keys
        self._policy = policy
        self._registry = _Registry(algorithms=sorted(ALLOWED_ALGORITHMS))
        # token -> (caller, wall-clock deadline, key set generation)
        self._verified: dict[str, tuple[Caller, float, int]] = {}

    async def verify(self, authorization: str | None) -> Caller:
        """The caller an ``Authorization`` value proves; raises Unauthenticated."""
        return await self.verify_token(bearer_token(authorization))

    async def verify_token(self, token: str) -> Caller:
        """The caller a bare compact JWS proves; raises Unauthenticated."""
        hit = self._verified.get(token)
        if hit is not None:
            caller, deadline, generation = hit
            # A changed or stale key set, or an expiry, sends it through the
            # full check again (which then says why it fails).
            if (
                generation == self.keys.generation
                and time.time() < deadline
                and self.keys.is_fresh()
            ):
                return caller
            self._verified.pop(token, None)
        generation = self.keys.generation
        caller, claims = await self._verify(token)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)))  # oldest first
        self._verified[token] = (caller, float(claims["exp"]) + self._policy.leeway_s, generation)
        return caller

    async def _verify(self, token: str) -> tuple[Caller, dict[str, Any]]:
        try:
            obj = jws.extract_compact(token.encode("ascii"), registry=self._registry)
            header = obj.headers()
        except JoseError:
            raise _invalid("the access token is not a well-formed JWT") from None
        kid = self._check_header(header)
        # Only after the header passed: garbage tokens never cause a fetch.
        key = await self.keys.key_for(kid)
        if key is None:
            raise _invalid("the access token's signing key (kid) is unknown")
        if header["alg"] not in key.algorithms:
            raise _invalid("the access token's algorithm does not match its key")
        try:
            valid = jws.validate_compact(obj, key.key, registry=self._registry)
        except JoseError:
            valid = False
        if not valid:
            raise _invalid("the access token's signature does not verify")
        try:
            claims = json.loads(obj.payload or b"")
        except ValueError:
            raise _invalid("the access token's payload is not JSON") from None
        if not isinstance(claims, dict):
            raise _invalid("the access token's payload is not a JSON object")
        return self._policy.caller(claims, token), claims

    def _check_header(self, header: dict[str, Any]) -> str:
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
            # Say which algorithms we take, never echo the token.
            raise _invalid(
                "the access token's algorithm is not accepted; expected one of "
                + ", ".join(sorted(ALLOWED_ALGORITHMS))
            )
        # Unencoded payloads (RFC 7797) and critical extensions are never ours.
        if "b64" in header or "crit" in header:
            raise _invalid("the access token uses JWS extensions this edge does not accept")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in _ACCEPTED_TYP):
            raise _invalid("the access token's 'typ' is not a JWT access token")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _invalid("the access token has no 'kid' header")
        return kid

    async def close(self) -> None:
        await self.keys.close()


def verifier_from_settings(
    settings: Settings, auth_channel: Callable[[], grpc.aio.Channel]
) -> TokenVerifier:
    """Keys from ``jwks_url``, else the auth service's GetJwks over ``auth_channel``."""
    source: KeySource
    if settings.jwks_url:
        source = HttpKeySource(settings.jwks_url, settings.jwks_fetch_timeout_seconds)
    else:
        source = GrpcKeySource(auth_channel, settings.jwks_fetch_timeout_seconds)
    cache = KeyCache(
        source,
        cache_seconds=settings.jwks_cache_seconds,
        min_refresh_seconds=settings.jwks_min_refresh_seconds,
    )
    policy = ClaimsPolicy(
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        leeway_s=settings.jwt_leeway_seconds,
    )
    return TokenVerifier(cache, policy)

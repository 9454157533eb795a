"""Access tokens for tests that call services directly, as the gateway would.

Services verify the user's access token themselves (kernel.tokens), so a
test names its user with a real ES256 token signed by this module's key,
whose JWK Set a real HTTP server publishes (``JWKS_URL``; the ``settings``
fixture points ``jwks_url`` at it). ``as_user("u_1")`` is the metadata of a
call as u_1; ``as_user("u_admin", "admin")`` with scopes.
"""

from __future__ import annotations

import time
import uuid
from functools import cache

from joserfc import jwt
from joserfc.jwk import ECKey

from kernel.settings import Settings
from tests.support.jwks_server import JwksServer

Metadata = tuple[tuple[str, str], ...]
_DEFAULTS = Settings()


class TestIssuer:
    """One signing key and the JWKS server that publishes it."""

    __test__ = False  # not a test class

    def __init__(self) -> None:
        self.key = ECKey.generate_key("P-256", parameters={"kid": f"test-{uuid.uuid4().hex[:8]}"})
        self.jwks = JwksServer()
        self.jwks.publish(self.key)

    @property
    def jwks_url(self) -> str:
        return self.jwks.url

    def mint(
        self,
        user: str,
        *scopes: str,
        session: str | None = None,
        ttl_s: int = 600,
        issuer: str = _DEFAULTS.auth_issuer,
        audience: str = _DEFAULTS.auth_audience,
    ) -> str:
        now = int(time.time())
        claims: dict[str, object] = {
            "iss": issuer,
            "aud": audience,
            "sub": user,
            "iat": now,
            "exp": now + ttl_s,
            "jti": uuid.uuid4().hex,
        }
        if scopes:
            claims["scope"] = " ".join(scopes)
        if session:
            claims["sid"] = session
        header = {"alg": "ES256", "kid": self.key.kid, "typ": "at+jwt"}
        return jwt.encode(header, claims, self.key)


@cache
def issuer() -> TestIssuer:
    """The test session's issuer (started on first use, a daemon thread)."""
    return TestIssuer()


@cache
def _token(user: str, scopes: tuple[str, ...], session: str | None) -> str:
    # One token per identity: services cache verified tokens, as with a real app.
    return issuer().mint(user, *scopes, session=session, ttl_s=6 * 3600)


def as_user(user: str, *scopes: str, session: str | None = None) -> Metadata:
    """Metadata of a call as ``user`` (``users/`` prefix allowed) with ``scopes``."""
    token = _token(user.removeprefix("users/"), tuple(sorted(scopes)), session)
    return (("authorization", f"Bearer {token}"),)

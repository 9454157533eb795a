"""Access tokens for tests that call services directly, as the gateway would.

Services verify the user's access token themselves (kernel.tokens), so a
test names its user with a real ES256 token from this session's
``TokenIssuer`` (tipsmesh.devtokens), whose JWK Set a real HTTP server
publishes; conftest points ``TIPS_JWKS_URL`` at it. ``as_user("u_1")`` is
the metadata of a call as u_1; ``as_user("u_admin", "admin")`` with scopes.
"""

from __future__ import annotations

from functools import cache

from tipsmesh.devtokens import TokenIssuer

Metadata = tuple[tuple[str, str], ...]


@cache
def issuer() -> TokenIssuer:
    """The test session's issuer (started on first use, a daemon thread)."""
    return TokenIssuer()


@cache
def _token(user: str, scopes: tuple[str, ...], session: str | None) -> str:
    # One token per identity: services cache verified tokens, as with a real app.
    return issuer().mint(user, *scopes, session=session, ttl_s=6 * 3600)


def as_user(user: str, *scopes: str, session: str | None = None) -> Metadata:
    """Metadata of a call as ``user`` (``users/`` prefix allowed) with ``scopes``."""
    token = _token(user.removeprefix("users/"), tuple(sorted(scopes)), session)
    return (("authorization", f"Bearer {token}"),)

"""The token check at the edge: ``Authorization: Bearer <jwt>`` to a Caller.

The transcoder calls ``EdgeAuth.authenticate`` for every route whose access
option is not ``public``. The token itself is checked by the kernel's
``TokenVerifier`` (kernel/tokens.py, the same check every service makes
again, docs/edge-auth.md has the rules); the edge adds what only it knows:
a token whose session was revoked since (``gateway.revocations``) is refused
with SESSION_REVOKED, also when the token was verified before.

The verified token is what the edge forwards upstream (``Caller.token``), so
services verify the user themselves instead of trusting a header.
"""

from __future__ import annotations

from typing import Protocol

from gateway.revocations import RevokedSessions
from gateway.upstreams import Upstreams
from kernel.errors import Unauthenticated
from kernel.identity import Caller
from kernel.settings import Settings
from kernel.tokens import TokenVerifier, verifier_from_settings


class EdgeAuth(Protocol):
    """What the transcoder needs from the token check."""

    async def authenticate(self, authorization: str | None) -> Caller:
        """The verified caller; raises Unauthenticated (or Unavailable)."""
        ...

    async def close(self) -> None: ...


class JwtEdgeAuth:
    """EdgeAuth: a verified JWT whose session is not revoked."""

    def __init__(self, verifier: TokenVerifier, revoked: RevokedSessions | None = None) -> None:
        self.verifier = verifier
        self.keys = verifier.keys
        self._revoked = revoked

    async def authenticate(self, authorization: str | None) -> Caller:
        return self._not_revoked(await self.verifier.verify(authorization))

    def _not_revoked(self, caller: Caller) -> Caller:
        # After the verifier's memo too: a token verified before its session was revoked.
        if (
            self._revoked is not None
            and caller.session is not None
            and self._revoked.is_revoked(caller.session)
        ):
            raise Unauthenticated(
                "the access token's session has been revoked (signed out or deleted): "
                "sign in again",
                reason="SESSION_REVOKED",
            )
        return caller

    async def close(self) -> None:
        await self.verifier.close()


def edge_auth_from_settings(
    settings: Settings, upstreams: Upstreams, revoked: RevokedSessions | None = None
) -> EdgeAuth:
    """The edge's token check: keys from ``jwks_url``, else the auth service;
    tokens of a session in ``revoked`` are refused (gateway.revocations)."""
    verifier = verifier_from_settings(settings, lambda: upstreams.channel("auth"))
    return JwtEdgeAuth(verifier, revoked=revoked)

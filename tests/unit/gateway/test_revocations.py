"""The edge's revoked-session set: deadlines, expiry, events, and the token check."""

from __future__ import annotations

import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from gateway.auth import JwtEdgeAuth
from gateway.revocations import RevocationFeed, RevokedSessions, refuse_until, session_id
from kernel.errors import Unauthenticated
from kernel.jwks import KeyCache
from kernel.settings import Settings
from kernel.tokens import ClaimsPolicy, TokenVerifier
from tips.auth.v1 import events_pb2

pytestmark = pytest.mark.unit


def test_an_entry_is_refused_until_its_deadline_then_forgotten() -> None:
    revoked = RevokedSessions()
    now = time.time()
    revoked.add("s_1", now + 60)
    revoked.add("s_old", now - 1)
    assert revoked.is_revoked("s_1")
    assert not revoked.is_revoked("s_2")
    assert not revoked.is_revoked("s_old")  # past its deadline: dropped on lookup
    assert len(revoked) == 1
    # A later deadline wins; an earlier one never shortens it.
    revoked.add("s_1", now + 120)
    revoked.add("s_1", now + 10)
    assert revoked.prune(now + 100) == 0 and revoked.is_revoked("s_1")
    assert revoked.prune(now + 121) == 1 and len(revoked) == 0


def test_session_id_of_a_session_name() -> None:
    assert session_id("users/u_1/sessions/s_9") == "s_9"
    for bad in ("", "s_9", "users/u_1/sessions/", "users/u_1/sessions/a/b", "users/u/identities/i"):
        assert session_id(bad) is None, bad


def _event(revoked_at: float | None, expire_at: float | None = None) -> events_pb2.SessionRevoked:
    event = events_pb2.SessionRevoked(event_id="e1", user="users/u", session="users/u/sessions/s")
    if revoked_at is not None:
        event.occur_time.FromSeconds(int(revoked_at))
    if expire_at is not None:
        event.access_token_expire_time.FromSeconds(int(expire_at))
    return event


def test_refused_until_revocation_plus_token_lifetime_and_leeway() -> None:
    t = 1_700_000_000.0
    assert refuse_until(_event(t), 600, 30, now=t + 5) == t + 630
    # The session's last token expires later than that (auth's lifetime is longer).
    assert refuse_until(_event(t, t + 900), 600, 30, now=t) == t + 930
    # ... or earlier: the lifetime from the revocation still holds.
    assert refuse_until(_event(t, t + 100), 600, 30, now=t) == t + 630
    # No time in the event: counted from now.
    assert refuse_until(_event(None), 600, 30, now=t) == t + 630


def test_the_feed_keeps_recent_revocations_and_skips_old_ones() -> None:
    settings = Settings(auth_access_token_ttl_seconds=600, jwt_leeway_seconds=30)
    revoked = RevokedSessions()
    feed = RevocationFeed(settings, revoked)
    now = time.time()
    assert feed.window_s == 630
    assert feed.apply(_event(now - 10), now=now)
    assert revoked.is_revoked("s")
    # Revoked longer ago than any token can live: nothing to refuse.
    stale = _event(now - 700)
    stale.session = "users/u/sessions/s_old"
    assert not feed.apply(stale, now=now) and not revoked.is_revoked("s_old")
    nameless = _event(now)
    nameless.session = "sessions/s"
    assert not feed.apply(nameless, now=now)
    assert feed.state == "connecting" and not feed.ready


ISS, AUD = "https://auth.test", "tips-api"


class _Keys:
    description = "in memory"

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    async def fetch(self) -> dict[str, Any]:
        return self.doc

    async def close(self) -> None:
        return None


async def test_a_revoked_session_is_refused_even_when_the_token_is_remembered() -> None:
    key = ECKey.generate_key("P-256", parameters={"kid": "k1"})
    cache = KeyCache(
        _Keys({"keys": [key.as_dict(private=False)]}), cache_seconds=300, min_refresh_seconds=0
    )
    revoked = RevokedSessions()
    policy = ClaimsPolicy(issuer=ISS, audience=AUD, leeway_s=30)
    auth = JwtEdgeAuth(TokenVerifier(cache, policy), revoked)
    now = int(time.time())
    claims = {"iss": ISS, "aud": AUD, "sub": "u_1", "iat": now, "exp": now + 300}
    token = jwt.encode(
        {"alg": "ES256", "kid": "k1"}, {**claims, "sid": "s_1"}, key, algorithms=["ES256"]
    )
    no_sid = jwt.encode({"alg": "ES256", "kid": "k1"}, claims, key, algorithms=["ES256"])
    header = f"Bearer {token}"
    assert (await auth.authenticate(header)).session == "s_1"  # verified, remembered
    revoked.add("s_1", time.time() + 60)
    with pytest.raises(Unauthenticated) as exc:
        await auth.authenticate(header)
    assert exc.value.reason == "SESSION_REVOKED"
    assert (await auth.authenticate(f"Bearer {no_sid}")).session is None

"""The edge's token rules: header parsing, claim checks, JWK Set parsing, cache.

Keys come from an in-memory KeySource here; tests/integration/gateway/
test_edge_auth.py serves them over real HTTP and gRPC.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey

from gateway.auth import JwtEdgeAuth
from kernel.errors import Unauthenticated, Unavailable
from kernel.identity import Caller
from kernel.jwks import JwksFetchError, KeyCache, parse_jwks
from kernel.tokens import ClaimsPolicy, TokenVerifier, bearer_token

pytestmark = [pytest.mark.unit, pytest.mark.filterwarnings("ignore:EdDSA is deprecated")]

ISS = "https://auth.test"
AUD = "tips-api"


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "u_123",
        "exp": now + 300,
        "iat": now,
        "scope": "tips.read tips.write",
        "sid": "s_9",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _reason(exc: pytest.ExceptionInfo[Unauthenticated]) -> str:
    return exc.value.reason


POLICY = ClaimsPolicy(issuer=ISS, audience=AUD, leeway_s=30)


# --- Authorization header ---------------------------------------------------


@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing_header_is_token_missing(header: str | None) -> None:
    with pytest.raises(Unauthenticated) as exc:
        bearer_token(header)
    assert _reason(exc) == "TOKEN_MISSING"


@pytest.mark.parametrize(
    "header",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Bearer a b", "Bearer a\nb", "Token abc.def.ghi"],
)
def test_malformed_header_is_token_invalid(header: str) -> None:
    with pytest.raises(Unauthenticated) as exc:
        bearer_token(header)
    assert _reason(exc) == "TOKEN_INVALID"
    assert "dXNlcjpwYXNz" not in exc.value.message


def test_bearer_scheme_is_case_insensitive() -> None:
    assert bearer_token("bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("BEARER  abc.def.ghi") == "abc.def.ghi"


def test_overlong_header_is_refused() -> None:
    with pytest.raises(Unauthenticated) as exc:
        bearer_token("Bearer " + "a" * 9000)
    assert _reason(exc) == "TOKEN_INVALID"


# --- claims ------------------------------------------------------------------


def test_valid_claims_map_to_caller() -> None:
    caller = POLICY.caller(_claims())
    assert caller == Caller(
        user="u_123", scopes=frozenset({"tips.read", "tips.write"}), session="s_9"
    )


def test_scope_and_sid_are_optional() -> None:
    assert POLICY.caller(_claims(scope=None, sid=None)) == Caller(user="u_123")


def test_audience_list_containing_ours_is_accepted() -> None:
    assert POLICY.caller(_claims(aud=["other", AUD])).user == "u_123"


@pytest.mark.parametrize(
    ("overrides", "claim"),
    [
        ({"aud": "someone-else"}, "aud"),
        ({"aud": ["a", "b"]}, "aud"),
        ({"aud": 7}, "aud"),
        ({"iss": "https://evil.test"}, "iss"),
        ({"sub": ""}, "sub"),
        ({"sub": "u_1/../admin"}, "sub"),
        ({"sub": 42}, "sub"),
        ({"scope": ["tips.read"]}, "scope"),
        ({"sid": "a b"}, "sid"),
        ({"exp": "tomorrow"}, "exp"),
    ],
)
def test_bad_claim_is_token_invalid_naming_it(overrides: dict[str, Any], claim: str) -> None:
    with pytest.raises(Unauthenticated) as exc:
        POLICY.caller(_claims(**overrides))
    assert _reason(exc) == "TOKEN_INVALID"
    assert exc.value.metadata["claim"] == claim


@pytest.mark.parametrize("claim", ["iss", "aud", "exp", "sub"])
def test_required_claim_missing(claim: str) -> None:
    with pytest.raises(Unauthenticated) as exc:
        POLICY.caller(_claims(**{claim: None}))
    assert _reason(exc) == "TOKEN_INVALID"
    assert claim in exc.value.message


def test_expired_token() -> None:
    with pytest.raises(Unauthenticated) as exc:
        POLICY.caller(_claims(exp=int(time.time()) - 31))
    assert _reason(exc) == "TOKEN_EXPIRED"


def test_expiry_within_leeway_is_accepted() -> None:
    assert POLICY.caller(_claims(exp=int(time.time()) - 10)).user == "u_123"


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_not_yet_valid(claim: str) -> None:
    with pytest.raises(Unauthenticated) as exc:
        POLICY.caller(_claims(**{claim: int(time.time()) + 120}))
    assert _reason(exc) == "TOKEN_NOT_YET_VALID"
    assert POLICY.caller(_claims(**{claim: int(time.time()) + 10})).user == "u_123"


# --- JWK Set parsing -----------------------------------------------------------


def test_parse_jwks_keeps_only_usable_signing_keys() -> None:
    ec = ECKey.generate_key("P-256", parameters={"kid": "ec"})
    ed = OKPKey.generate_key("Ed25519", parameters={"kid": "ed"})
    p384 = ECKey.generate_key("P-384", parameters={"kid": "p384"})
    rsa = RSAKey.generate_key(2048, parameters={"kid": "rsa"})
    doc = {
        "keys": [
            ec.as_dict(private=True),  # a leaked private part is dropped, not used
            ed.as_dict(private=False),
            p384.as_dict(private=False),
            rsa.as_dict(private=False),
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {**ed.as_dict(private=False), "kid": "enc", "use": "enc"},
            {**ec.as_dict(private=False), "kid": "wrong-alg", "alg": "EdDSA"},
            {**ec.as_dict(private=False), "kid": ""},
            {**ec.as_dict(private=False), "kid": "bad-point", "x": "AAAA"},
            "not a key",
        ]
    }
    keys = parse_jwks(doc)
    assert sorted(keys) == ["ec", "ed"]
    assert keys["ec"].algorithms == {"ES256"}
    assert keys["ed"].algorithms == {"EdDSA", "Ed25519"}
    assert not keys["ec"].key.is_private


def test_parse_jwks_needs_keys_array() -> None:
    with pytest.raises(JwksFetchError):
        parse_jwks({"keys": "nope"})


# --- the cache -------------------------------------------------------------------


class MemorySource:
    """A KeySource that answers from memory and counts fetches."""

    description = "memory"

    def __init__(self, doc: Mapping[str, Any]) -> None:
        self.doc: Mapping[str, Any] | None = doc
        self.fetches = 0
        self.delay = 0.0

    async def fetch(self) -> Mapping[str, Any]:
        self.fetches += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.doc is None:
            raise JwksFetchError("memory source is down")
        return self.doc

    async def close(self) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _doc(*keys: ECKey | OKPKey) -> dict[str, Any]:
    return {"keys": [k.as_dict(private=False) for k in keys]}


async def test_cache_refreshes_on_unknown_kid_at_most_once_per_interval() -> None:
    k1 = ECKey.generate_key("P-256", parameters={"kid": "k1"})
    source, clock = MemorySource(_doc(k1)), Clock()
    cache = KeyCache(source, cache_seconds=300, min_refresh_seconds=5, clock=clock)
    assert (await cache.key_for("k1")) is not None
    for i in range(50):
        assert await cache.key_for(f"garbage-{i}") is None
    assert source.fetches == 1  # the first fetch counts for the interval
    clock.now += 5
    assert await cache.key_for("garbage-x") is None
    assert source.fetches == 2


async def test_concurrent_refreshes_share_one_fetch() -> None:
    k1 = OKPKey.generate_key("Ed25519", parameters={"kid": "k1"})
    source = MemorySource(_doc(k1))
    source.delay = 0.05
    cache = KeyCache(source, cache_seconds=300, min_refresh_seconds=0)
    found = await asyncio.gather(*(cache.key_for("k1") for _ in range(20)))
    assert all(k is not None for k in found)
    assert source.fetches == 1


async def test_stale_keys_are_refetched_and_kept_when_the_source_fails() -> None:
    k1 = ECKey.generate_key("P-256", parameters={"kid": "k1"})
    source, clock = MemorySource(_doc(k1)), Clock()
    cache = KeyCache(source, cache_seconds=60, min_refresh_seconds=5, clock=clock)
    assert await cache.key_for("k1") is not None
    source.doc = None
    clock.now += 61
    assert await cache.key_for("k1") is not None  # refresh failed, cache kept
    assert source.fetches == 2


async def test_cold_cache_fails_closed_and_does_not_hammer() -> None:
    source, clock = MemorySource({}), Clock()
    source.doc = None
    cache = KeyCache(source, cache_seconds=60, min_refresh_seconds=5, clock=clock)
    for _ in range(10):
        with pytest.raises(Unavailable) as exc:
            await cache.key_for("k1")
        assert exc.value.reason == "AUTH_KEYS_UNAVAILABLE"
        assert "memory source is down" in exc.value.message
    assert source.fetches == 1


async def test_edge_auth_end_to_end_in_memory() -> None:
    key = ECKey.generate_key("P-256", parameters={"kid": "k1"})
    cache = KeyCache(MemorySource(_doc(key)), cache_seconds=60, min_refresh_seconds=5)
    auth = JwtEdgeAuth(TokenVerifier(cache, POLICY))
    token = jwt.encode({"alg": "ES256", "kid": "k1"}, _claims(), key, algorithms=["ES256"])
    caller = await auth.authenticate(f"Bearer {token}")
    assert caller.user == "u_123"
    assert caller.session == "s_9"


async def test_remembered_token_still_expires() -> None:
    key = OKPKey.generate_key("Ed25519", parameters={"kid": "k1"})
    strict = ClaimsPolicy(issuer=ISS, audience=AUD, leeway_s=0)
    cache = KeyCache(MemorySource(_doc(key)), cache_seconds=60, min_refresh_seconds=5)
    auth = JwtEdgeAuth(TokenVerifier(cache, strict))
    exp = int(time.time()) + 1
    token = jwt.encode({"alg": "EdDSA", "kid": "k1"}, _claims(exp=exp), key, algorithms=["EdDSA"])
    assert (await auth.authenticate(f"Bearer {token}")).user == "u_123"
    assert (await auth.authenticate(f"Bearer {token}")).user == "u_123"
    await asyncio.sleep(max(0.0, exp - time.time()) + 0.05)
    with pytest.raises(Unauthenticated) as exc:
        await auth.authenticate(f"Bearer {token}")
    assert exc.value.reason == "TOKEN_EXPIRED"


async def test_key_set_generation_moves_only_when_keys_change() -> None:
    key = ECKey.generate_key("P-256", parameters={"kid": "k1"})
    source = MemorySource(_doc(key))
    cache = KeyCache(source, cache_seconds=60, min_refresh_seconds=0)
    await cache.refresh()
    first = cache.generation
    await cache.refresh()
    assert cache.generation == first
    source.doc = _doc(ECKey.generate_key("P-256", parameters={"kid": "k1"}))  # same kid, new key
    await cache.refresh()
    assert cache.generation == first + 1

"""The edge's token check against a JWK Set served over real HTTP and gRPC.

The auth service does not issue tokens yet, so each test generates its own
keys (Ed25519 and P-256), serves their JWK Set from a real HTTP server on a
free port, signs its own tokens and shows every attack fails closed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey

from gateway.auth import EdgeAuth, edge_auth_from_settings
from gateway.upstreams import Upstreams
from kernel.errors import Unauthenticated, Unavailable
from kernel.settings import Settings
from tips.auth.v1 import auth_service_pb2, auth_service_pb2_grpc, jwk_pb2
from tipsmesh.devtokens import JwksServer

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:EdDSA is deprecated")]

ISS = "https://auth.test"
AUD = "tips-api"


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    try:
        yield server
    finally:
        server.stop()


def _settings(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "jwks_url": url,
        "auth_issuer": ISS,
        "auth_audience": AUD,
        "jwks_min_refresh_seconds": 0.3,
        "jwks_fetch_timeout_seconds": 1.0,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def auth(jwks: JwksServer) -> AsyncIterator[EdgeAuth]:
    edge = edge_auth_from_settings(_settings(jwks.url), Upstreams({}))
    try:
        yield edge
    finally:
        await edge.close()


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "u_42",
        "iat": now,
        "exp": now + 300,
        "scope": "tips.read",
        "sid": "s_1",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(key: ECKey | OKPKey, claims: dict[str, Any], alg: str | None = None) -> str:
    alg = alg or ("ES256" if isinstance(key, ECKey) else "EdDSA")
    return jwt.encode({"alg": alg, "kid": key.kid}, claims, key, algorithms=[alg])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _handmade(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    if secret is None:
        return signing_input + "."
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


async def _rejected(auth: EdgeAuth, token: str, reason: str = "TOKEN_INVALID") -> str:
    with pytest.raises(Unauthenticated) as exc:
        await auth.authenticate(f"Bearer {token}")
    assert exc.value.reason == reason, exc.value.message
    assert token not in exc.value.message
    return exc.value.message


@pytest.fixture
def keys(jwks: JwksServer) -> tuple[ECKey, OKPKey]:
    ec = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
    ed = OKPKey.generate_key("Ed25519", parameters={"kid": "ed-1"})
    jwks.publish(ec, ed)
    return ec, ed


async def test_valid_tokens_of_both_algorithms_verify(
    auth: EdgeAuth, keys: tuple[ECKey, OKPKey], jwks: JwksServer
) -> None:
    ec, ed = keys
    for token in (_sign(ec, _claims()), _sign(ed, _claims()), _sign(ed, _claims(), "Ed25519")):
        caller = await auth.authenticate(f"Bearer {token}")
        assert (caller.user, caller.session) == ("u_42", "s_1")
        assert caller.scopes == frozenset({"tips.read"})
    assert jwks.fetches == 1


async def test_alg_none_is_rejected(auth: EdgeAuth, keys: tuple[ECKey, OKPKey]) -> None:
    token = _handmade({"alg": "none", "kid": "ec-1", "typ": "JWT"}, _claims(), None)
    assert "algorithm" in await _rejected(auth, token)


async def test_hs256_signed_with_the_public_key_is_rejected(
    auth: EdgeAuth, keys: tuple[ECKey, OKPKey], jwks: JwksServer
) -> None:
    ec, ed = keys
    # The classic confusion attack: the public key (in every form an
    # attacker could fetch) used as the HMAC secret.
    for key in (ec, ed):
        public = key.as_dict(private=False)
        secrets = [json.dumps(public).encode(), key.as_bytes(private=False)]
        for secret in secrets:
            token = _handmade({"alg": "HS256", "kid": key.kid}, _claims(), secret)
            await _rejected(auth, token)


async def test_other_algorithms_are_rejected(auth: EdgeAuth, keys: tuple[ECKey, OKPKey]) -> None:
    # A P-384 key under a published kid: ES384 is not on the allow list.
    p384 = ECKey.generate_key("P-384", parameters={"kid": "ec-1"})
    await _rejected(auth, _sign(p384, _claims(), "ES384"))


async def test_algorithm_must_fit_the_key(auth: EdgeAuth, keys: tuple[ECKey, OKPKey]) -> None:
    _, ed = keys
    # An Ed25519 signature presented under the EC key's kid.
    forged = jwt.encode({"alg": "EdDSA", "kid": "ec-1"}, _claims(), ed, algorithms=["EdDSA"])
    await _rejected(auth, forged)


async def test_expired_token(auth: EdgeAuth, keys: tuple[ECKey, OKPKey]) -> None:
    ec, _ = keys
    now = int(time.time())
    await _rejected(auth, _sign(ec, _claims(iat=now - 900, exp=now - 600)), "TOKEN_EXPIRED")


async def test_not_yet_valid_token(auth: EdgeAuth, keys: tuple[ECKey, OKPKey]) -> None:
    _, ed = keys
    now = int(time.time())
    await _rejected(auth, _sign(ed, _claims(nbf=now + 600)), "TOKEN_NOT_YET_VALID")


@pytest.mark.parametrize(
    "overrides",
    [{"aud": "another-api"}, {"aud": ["x", "y"]}, {"iss": "https://evil.test"}, {"sub": None}],
    ids=["wrong-aud", "wrong-aud-list", "wrong-iss", "missing-sub"],
)
async def test_wrong_claims(
    auth: EdgeAuth, keys: tuple[ECKey, OKPKey], overrides: dict[str, Any]
) -> None:
    ec, _ = keys
    await _rejected(auth, _sign(ec, _claims(**overrides)))


async def test_tampered_payload(auth: EdgeAuth, keys: tuple[ECKey, OKPKey]) -> None:
    for key in keys:
        header, _, signature = _sign(key, _claims()).split(".")
        evil = _b64(json.dumps(_claims(sub="u_admin", scope="admin")).encode())
        assert "signature" in await _rejected(auth, f"{header}.{evil}.{signature}")


async def test_missing_kid_and_garbage(auth: EdgeAuth, keys: tuple[ECKey, OKPKey]) -> None:
    ec, _ = keys
    no_kid = jwt.encode({"alg": "ES256"}, _claims(), ec, algorithms=["ES256"])
    assert "kid" in await _rejected(auth, no_kid)
    await _rejected(auth, "not.a.jwt")
    await _rejected(auth, "a.b")
    with pytest.raises(Unauthenticated) as exc:
        await auth.authenticate(None)
    assert exc.value.reason == "TOKEN_MISSING"


async def test_unknown_kid_fails_after_one_refresh(
    auth: EdgeAuth, keys: tuple[ECKey, OKPKey], jwks: JwksServer
) -> None:
    ec, _ = keys
    await auth.authenticate(f"Bearer {_sign(ec, _claims())}")
    await asyncio.sleep(0.35)  # past the refresh interval
    stranger = ECKey.generate_key("P-256", parameters={"kid": "stranger"})
    assert "unknown" in await _rejected(auth, _sign(stranger, _claims()))
    assert jwks.fetches == 2


async def test_key_rotation_is_picked_up(
    auth: EdgeAuth, keys: tuple[ECKey, OKPKey], jwks: JwksServer
) -> None:
    ec, _ = keys
    await auth.authenticate(f"Bearer {_sign(ec, _claims())}")
    await asyncio.sleep(0.35)
    rotated = ECKey.generate_key("P-256", parameters={"kid": "ec-2"})
    jwks.publish(rotated, ec)  # new current key first, old one in its grace period
    caller = await auth.authenticate(f"Bearer {_sign(rotated, _claims(sub='u_7'))}")
    assert caller.user == "u_7"
    assert jwks.fetches == 2
    await auth.authenticate(f"Bearer {_sign(ec, _claims())}")  # old key still valid


async def test_unknown_kid_flood_fetches_at_most_once_per_interval(
    jwks: JwksServer, keys: tuple[ECKey, OKPKey]
) -> None:
    edge = edge_auth_from_settings(_settings(jwks.url, jwks_min_refresh_seconds=30), Upstreams({}))
    try:
        ec, _ = keys
        await edge.authenticate(f"Bearer {_sign(ec, _claims())}")
        strangers = [ECKey.generate_key("P-256", parameters={"kid": f"x{i}"}) for i in range(5)]
        tokens = [_sign(k, _claims()) for k in strangers for _ in range(40)]
        results = await asyncio.gather(
            *(edge.authenticate(f"Bearer {t}") for t in tokens), return_exceptions=True
        )
        assert all(isinstance(r, Unauthenticated) for r in results)
        assert jwks.fetches == 1
    finally:
        await edge.close()


async def test_endpoint_down_with_warm_cache_still_verifies(
    jwks: JwksServer, keys: tuple[ECKey, OKPKey]
) -> None:
    edge = edge_auth_from_settings(
        _settings(jwks.url, jwks_cache_seconds=0.2, jwks_min_refresh_seconds=0), Upstreams({})
    )
    try:
        ec, ed = keys
        await edge.authenticate(f"Bearer {_sign(ec, _claims())}")
        jwks.stop()
        await asyncio.sleep(0.25)  # the cache is stale: a refresh is due and fails
        assert (await edge.authenticate(f"Bearer {_sign(ed, _claims())}")).user == "u_42"
        assert jwks.fetches == 1
    finally:
        await edge.close()


async def test_removed_key_stops_verifying_remembered_tokens(
    jwks: JwksServer, keys: tuple[ECKey, OKPKey]
) -> None:
    edge = edge_auth_from_settings(
        _settings(jwks.url, jwks_cache_seconds=0.2, jwks_min_refresh_seconds=0), Upstreams({})
    )
    try:
        ec, ed = keys
        header = f"Bearer {_sign(ec, _claims())}"
        await edge.authenticate(header)
        await edge.authenticate(header)  # remembered
        jwks.publish(ed)  # the EC key is withdrawn (e.g. compromised)
        await asyncio.sleep(0.25)
        assert "unknown" in await _rejected(edge, header.removeprefix("Bearer "))
    finally:
        await edge.close()


async def test_endpoint_error_with_warm_cache_still_verifies(
    auth: EdgeAuth, jwks: JwksServer, keys: tuple[ECKey, OKPKey]
) -> None:
    ec, _ = keys
    await auth.authenticate(f"Bearer {_sign(ec, _claims())}")
    jwks.status = 503
    await asyncio.sleep(0.35)
    stranger = ECKey.generate_key("P-256", parameters={"kid": "stranger"})
    await _rejected(auth, _sign(stranger, _claims()))
    assert (await auth.authenticate(f"Bearer {_sign(ec, _claims())}")).user == "u_42"
    assert jwks.fetches == 2


async def test_cold_cache_with_endpoint_down_fails_closed(jwks: JwksServer) -> None:
    jwks.status = 500
    edge = edge_auth_from_settings(_settings(jwks.url), Upstreams({}))
    try:
        key = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
        with pytest.raises(Unavailable) as exc:
            await edge.authenticate(f"Bearer {_sign(key, _claims())}")
        assert exc.value.reason == "AUTH_KEYS_UNAVAILABLE"
        assert "HTTP 500" in exc.value.message
    finally:
        await edge.close()


# --- keys from the auth service over gRPC ---------------------------------------


class _JwksServicer(auth_service_pb2_grpc.AuthServiceServicer):
    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.keys = keys

    async def GetJwks(
        self, request: auth_service_pb2.GetJwksRequest, context: grpc.aio.ServicerContext
    ) -> auth_service_pb2.GetJwksResponse:
        return auth_service_pb2.GetJwksResponse(keys=[jwk_pb2.Jwk(**k) for k in self.keys])


async def _grpc_auth(servicer: auth_service_pb2_grpc.AuthServiceServicer) -> AsyncIterator[Any]:
    server = grpc.aio.server()
    auth_service_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    upstreams = Upstreams({"auth": f"127.0.0.1:{port}"})
    settings = Settings(auth_issuer=ISS, auth_audience=AUD, jwks_url=None)
    edge = edge_auth_from_settings(settings, upstreams)
    try:
        yield edge
    finally:
        await edge.close()
        await upstreams.close()
        await server.stop(None)


async def test_keys_from_the_auth_service_over_grpc() -> None:
    ec = ECKey.generate_key("P-256", parameters={"kid": "ec-g"})
    ed = OKPKey.generate_key("Ed25519", parameters={"kid": "ed-g"})
    published = [{**k.as_dict(private=False), "use": "sig"} for k in (ec, ed)]
    async for edge in _grpc_auth(_JwksServicer(published)):
        for key in (ec, ed):
            assert (await edge.authenticate(f"Bearer {_sign(key, _claims())}")).user == "u_42"


async def test_auth_service_without_getjwks_fails_closed() -> None:
    # The base servicer answers UNIMPLEMENTED, as the auth service does today.
    key = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
    async for edge in _grpc_auth(auth_service_pb2_grpc.AuthServiceServicer()):
        with pytest.raises(Unavailable) as exc:
            await edge.authenticate(f"Bearer {_sign(key, _claims())}")
        assert exc.value.reason == "AUTH_KEYS_UNAVAILABLE"
        assert "UNIMPLEMENTED" in exc.value.message


# --- speed -----------------------------------------------------------------------


def _percentiles(samples: list[float]) -> str:
    cuts = statistics.quantiles(samples, n=100)
    return f"p50 {cuts[49] * 1e6:.0f} us, p99 {cuts[98] * 1e6:.0f} us"


async def test_verification_latency(auth: EdgeAuth, keys: tuple[ECKey, OKPKey]) -> None:
    report = []
    for key in keys:
        # Distinct tokens: every call checks a signature (first sight of a token).
        headers = [f"Bearer {_sign(key, _claims(jti=str(i)))}" for i in range(2000)]
        await auth.authenticate(headers[0])  # warm the key cache
        fresh, repeat = [], []
        for header in headers:
            start = time.perf_counter()
            await auth.authenticate(header)
            fresh.append(time.perf_counter() - start)
        for header in headers:
            start = time.perf_counter()
            await auth.authenticate(header)
            repeat.append(time.perf_counter() - start)
        name = "ES256" if isinstance(key, ECKey) else "EdDSA"
        report.append(f"{name} first {_percentiles(fresh)}; repeat {_percentiles(repeat)}")
        # Generous bound for a shared 2-core machine; the numbers are printed.
        assert statistics.median(fresh) < 0.002
        assert statistics.median(repeat) < statistics.median(fresh)
    print("authenticate over 2000 tokens: " + " | ".join(report))

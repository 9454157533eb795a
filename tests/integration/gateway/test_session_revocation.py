"""Revoked sessions at the edge: a real gateway (uvicorn, free port), real NATS.

The product's app (``gateway.server.product_app``) verifies tokens this test
signs (JWK Set over real HTTP) and follows ``tips.auth.v1.SessionRevoked`` on
the real ``TIPS_AUTH`` stream. A stand-in ProfileService behind it answers
GetProfile, so a 200 means the token passed the edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import nats
import pytest
import uvicorn
from joserfc import jwt
from joserfc.jwk import ECKey
from starlette.applications import Starlette

from gateway.revocations import RevocationFeed
from gateway.server import product_app
from kernel.bus import Bus
from kernel.settings import Settings
from services.auth.service import SERVICE as AUTH
from tests.support.waiting import eventually
from tips.auth.v1 import events_pb2, session_pb2
from tips.profile.v1 import profile_pb2, profile_service_pb2, profile_service_pb2_grpc
from tipsmesh.devtokens import JwksServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ISS = "https://auth.test"
AUD = "tips-api"
USER = "u_42"
# Revocations reach every replica within this (one fetch round trip in practice).
PROPAGATION_S = 5.0


class ProfileStandIn(profile_service_pb2_grpc.ProfileServiceServicer):
    """GetProfile for any caller: a 200 at the edge means the token passed."""

    async def GetProfile(self, request: Any, context: Any) -> Any:
        return profile_service_pb2.GetProfileResponse(
            profile=profile_pb2.Profile(name=request.name)
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def jwks() -> Iterator[tuple[JwksServer, ECKey]]:
    server = JwksServer()
    key = ECKey.generate_key("P-256", parameters={"kid": f"ec-{secrets.token_hex(3)}"})
    server.publish(key)
    try:
        yield server, key
    finally:
        server.stop()


@pytest.fixture
async def profile_addr() -> AsyncIterator[str]:
    server = grpc.aio.server()
    profile_service_pb2_grpc.add_ProfileServiceServicer_to_server(ProfileStandIn(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(0)


@pytest.fixture
async def auth_stream(nats_url: str) -> AsyncIterator[Bus]:
    """The auth service's own streams (TIPS_AUTH), as it declares them; a bus to publish."""
    nc = await nats.connect(nats_url)
    try:
        existed = True
        try:
            await nc.jetstream().stream_info("TIPS_AUTH")
        except nats.js.errors.NotFoundError:
            existed = False
    finally:
        await nc.close()
    bus = await Bus.connect(Settings(nats_url=nats_url), "test-auth")
    await bus.ensure_streams(AUTH.streams)
    yield bus
    if not existed:  # leave a shared server as found
        await bus.delete_stream("TIPS_AUTH")
    await bus.close()


@dataclass
class Edge:
    app: Starlette
    client: httpx.AsyncClient

    @property
    def feed(self) -> RevocationFeed:
        feed: RevocationFeed = self.app.state.revocations
        return feed

    async def status(self, token: str) -> tuple[int, dict[str, Any]]:
        got = await self.client.get(
            f"/v1/users/{USER}/profile", headers={"Authorization": f"Bearer {token}"}
        )
        return got.status_code, got.json()


@contextlib.asynccontextmanager
async def serve_edge(settings: Settings, *, wait_ready: bool = True) -> AsyncIterator[Edge]:
    """The product's gateway app on a free port, as ``tips serve gateway`` runs it."""
    app = product_app(settings)
    port = _free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, lifespan="on", proxy_headers=False
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(1000):  # uvicorn has no started event
            if server.started:
                break
            await asyncio.sleep(0.01)
        assert server.started, "the gateway did not start"
        edge = Edge(app, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10))
        if wait_ready:
            await eventually(lambda: _ready(edge), bool, within=20)
        yield edge
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await edge.client.aclose()
        async with asyncio.timeout(20):
            await task


async def _ready(edge: Edge) -> bool:
    return edge.feed.ready


def _settings(nats_url: str, jwks_url: str, profile_addr: str) -> Settings:
    return Settings(
        nats_url=nats_url,
        jwks_url=jwks_url,
        auth_issuer=ISS,
        auth_audience=AUD,
        profile_addr=profile_addr,
    )


def _token(key: ECKey, session: str) -> str:
    now = int(time.time())
    claims = {
        "iss": ISS,
        "aud": AUD,
        "sub": USER,
        "iat": now,
        "exp": now + 300,
        "scope": "tips.user",
        "sid": session,
    }
    return jwt.encode({"alg": "ES256", "kid": key.kid}, claims, key, algorithms=["ES256"])


async def _revoke(bus: Bus, session: str) -> None:
    event = events_pb2.SessionRevoked(
        event_id=uuid.uuid4().hex,
        user=f"users/{USER}",
        session=f"users/{USER}/sessions/{session}",
        reason=session_pb2.SESSION_REVOKE_REASON_SIGN_OUT,
    )
    event.occur_time.GetCurrentTime()
    await bus.publish(event, msg_id=event.event_id)


def _reason(body: dict[str, Any]) -> str | None:
    for detail in body.get("details", []):
        if "reason" in detail:
            return str(detail["reason"])
    return None


async def test_a_revoked_session_is_refused_by_running_and_later_gateways(
    nats_url: str,
    jwks: tuple[JwksServer, ECKey],
    profile_addr: str,
    auth_stream: Bus,
) -> None:
    server, key = jwks
    settings = _settings(nats_url, server.url, profile_addr)
    revoked_sid, other_sid = f"s_{secrets.token_hex(4)}", f"s_{secrets.token_hex(4)}"
    token, other = _token(key, revoked_sid), _token(key, other_sid)

    async with serve_edge(settings) as edge:
        assert edge.feed.state == "live"
        for _ in range(2):  # the second is the remembered-token path
            assert (await edge.status(token))[0] == 200
        assert (await edge.status(other))[0] == 200

        await _revoke(auth_stream, revoked_sid)
        began = time.monotonic()
        code, body = await eventually(
            lambda: edge.status(token), lambda r: r[0] != 200, PROPAGATION_S
        )
        took = time.monotonic() - began
        assert code == 401, body
        assert _reason(body) == "SESSION_REVOKED", body
        assert token not in str(body)
        # Still refused (not a one-off), and the other session is untouched.
        assert (await edge.status(token))[0] == 401
        assert (await edge.status(other))[0] == 200
        print(f"revocation reached the edge in {took * 1000:.0f} ms")

        # A gateway started after the revocation replays the recent window.
        async with serve_edge(settings) as later:
            code, body = await later.status(token)
            assert code == 401 and _reason(body) == "SESSION_REVOKED", body
            assert (await later.status(other))[0] == 200


async def test_the_edge_starts_without_the_bus_and_says_so(
    jwks: tuple[JwksServer, ECKey], profile_addr: str
) -> None:
    server, key = jwks
    nowhere = f"nats://127.0.0.1:{_free_port()}"
    async with serve_edge(_settings(nowhere, server.url, profile_addr), wait_ready=False) as edge:
        assert edge.feed.state == "connecting"
        ready = await edge.client.get("/readyz")
        assert ready.status_code == 503
        assert "revocations is connecting" in ready.json()["message"]
        # Tokens are still verified (and served) meanwhile: the documented residual window.
        assert (await edge.status(_token(key, "s_x")))[0] == 200

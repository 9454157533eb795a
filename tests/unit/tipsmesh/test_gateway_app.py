"""The edge app against real gRPC health servers (in-process, local sockets)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from gateway.app import create_app
from gateway.upstreams import Upstreams
from kernel.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def health_servers() -> AsyncIterator[dict[str, tuple[str, HealthServicer]]]:
    servers: list[grpc.aio.Server] = []
    found: dict[str, tuple[str, HealthServicer]] = {}
    for name in ("auth", "profile"):
        server = grpc.aio.server()
        health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        servers.append(server)
        found[name] = (f"127.0.0.1:{port}", health)
    yield found
    for server in servers:
        await server.stop(0)


async def _client(upstreams: Upstreams) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(), upstreams)
    async with app.router.lifespan_context(app):
        app.state.upstreams = upstreams
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            yield client


async def test_healthz_readyz_and_unknown_path(
    health_servers: dict[str, tuple[str, HealthServicer]],
) -> None:
    upstreams = Upstreams({name: addr for name, (addr, _) in health_servers.items()})
    async for client in _client(upstreams):
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["services"] == {"auth": "SERVING", "profile": "SERVING"}

        await health_servers["profile"][1].set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        not_ready = await client.get("/readyz")
        assert not_ready.status_code == 503
        body = not_ready.json()
        assert body["code"] == 14
        assert "profile is NOT_SERVING" in body["message"]
        assert "auth" not in body["message"]
        assert body["details"][0]["metadata"] == {"profile": "NOT_SERVING"}

        missing = await client.get("/v1/nothing/here")
        assert missing.status_code == 404
        # As grpc-gateway's DefaultRoutingErrorHandler: the message is the status text.
        assert missing.json() == {"code": 5, "message": "Not Found", "details": []}
        # Code UNIMPLEMENTED as grpc-gateway; HTTP 405 with Allow (it sends 501: docs/gateway.md).
        wrong_method = await client.post("/healthz")
        assert wrong_method.status_code == 405
        assert wrong_method.json()["code"] == 12


async def test_readyz_names_an_unreachable_upstream() -> None:
    with_dead = Upstreams({"notifier": "127.0.0.1:1"})
    async for client in _client(with_dead):
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert "notifier is UNAVAILABLE" in response.json()["message"]

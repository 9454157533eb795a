"""Probes ``tips up``, the tests and the bench use: gRPC health and HTTP."""

from __future__ import annotations

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kernel.settings import Settings
from kernel.tls import secure_channel

_SERVING = health_pb2.HealthCheckResponse.SERVING


async def grpc_status(
    address: str,
    service: str = "",
    deadline_s: float = 1.0,
    *,
    tls: Settings | None = None,
    server_name: str = "",
) -> str:
    """The health status name of ``service`` at ``address``, or the RPC error code name.

    ``tls``: the prober's mesh certificate (e.g. `tips up` as ``operator``), and
    ``server_name`` the service whose certificate the server must show.
    """
    if tls is None:
        channel = grpc.aio.insecure_channel(address)
    else:
        channel = secure_channel(address, tls, server_name=server_name)
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=deadline_s
            )
        except grpc.aio.AioRpcError as exc:
            return str(exc.code().name)
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return name


async def grpc_serving(
    address: str,
    service: str = "",
    deadline_s: float = 1.0,
    *,
    tls: Settings | None = None,
    server_name: str = "",
) -> bool:
    """True when ``address`` reports SERVING for ``service`` ("" = the whole server)."""
    status = await grpc_status(address, service, deadline_s, tls=tls, server_name=server_name)
    serving: str = health_pb2.HealthCheckResponse.ServingStatus.Name(_SERVING)
    return status == serving


async def http_ok(url: str, deadline_s: float = 1.0) -> bool:
    """True when GET ``url`` answers 200."""
    try:
        async with httpx.AsyncClient(timeout=deadline_s, trust_env=False) as client:
            response = await client.get(url)
    except httpx.HTTPError:
        return False
    return response.status_code == 200

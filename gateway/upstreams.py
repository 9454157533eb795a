"""The gRPC services behind the edge and their health (``/readyz``)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kernel.settings import SERVICE_NAMES, Settings

_SERVING = health_pb2.HealthCheckResponse.SERVING


class Upstreams:
    """One channel per upstream service, opened lazily, closed by ``close``."""

    def __init__(self, addresses: Mapping[str, str]) -> None:
        self.addresses = dict(addresses)
        self._channels: dict[str, grpc.aio.Channel] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Upstreams:
        return cls({name: settings.addr_of(name) for name in SERVICE_NAMES})

    def channel(self, name: str) -> grpc.aio.Channel:
        if name not in self._channels:
            self._channels[name] = grpc.aio.insecure_channel(self.addresses[name])
        return self._channels[name]

    async def health_of(self, name: str, deadline_s: float) -> str:
        """The service's overall health status name, or the RPC error's code name."""
        stub = health_pb2_grpc.HealthStub(self.channel(name))
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=deadline_s)
        except grpc.aio.AioRpcError as exc:
            return str(exc.code().name)
        status: str = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return status

    async def health(self, deadline_s: float) -> dict[str, str]:
        """Every upstream's status, checked in parallel."""
        names = list(self.addresses)
        results = await asyncio.gather(*(self.health_of(n, deadline_s) for n in names))
        return dict(zip(names, results, strict=True))

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        await asyncio.gather(*(ch.close() for ch in channels))


def not_serving(statuses: Mapping[str, str]) -> dict[str, str]:
    """The upstreams whose status is not SERVING."""
    return {
        name: status
        for name, status in statuses.items()
        if status != health_pb2.HealthCheckResponse.ServingStatus.Name(_SERVING)
    }

"""How the kernel runs the integrations service."""

from __future__ import annotations

from pathlib import Path

from kernel.bus import streams_for
from kernel.service import Binding, Runtime, ServiceDefinition, bind
from services.integrations.servicer import IntegrationsInternalServicer, IntegrationsServicer
from tips.integrations.v1 import events_pb2, integrations_service_pb2, integrations_service_pb2_grpc


async def build(runtime: Runtime) -> list[Binding]:
    """The servicers, wired to what the runtime provides."""
    # Not built yet: mypy sees the generated bases as abstract, and the
    # kernel answers their RPCs with UNIMPLEMENTED naming the RPC.
    public = IntegrationsServicer()  # type: ignore[abstract]
    internal = IntegrationsInternalServicer()  # type: ignore[abstract]
    return [
        bind(
            public, integrations_service_pb2_grpc, integrations_service_pb2, "IntegrationsService"
        ),
        bind(
            internal,
            integrations_service_pb2_grpc,
            integrations_service_pb2,
            "IntegrationsInternalService",
        ),
    ]


SERVICE = ServiceDefinition(
    name="integrations",
    build=build,
    migrations_dir=Path(__file__).parent / "migrations",
    streams=streams_for(events_pb2.ConnectionChanged, events_pb2.SyncCompleted),
)

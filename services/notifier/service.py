"""How the kernel runs the notifier service."""

from __future__ import annotations

from pathlib import Path

from kernel.bus import streams_for
from kernel.service import Binding, Runtime, ServiceDefinition, bind
from services.notifier.servicer import NotifierInternalServicer, NotifierServicer
from tips.notifier.v1 import events_pb2, notifier_service_pb2, notifier_service_pb2_grpc


async def build(runtime: Runtime) -> list[Binding]:
    """The servicers, wired to what the runtime provides."""
    # Not built yet: mypy sees the generated bases as abstract, and the
    # kernel answers their RPCs with UNIMPLEMENTED naming the RPC.
    public = NotifierServicer()  # type: ignore[abstract]
    internal = NotifierInternalServicer()  # type: ignore[abstract]
    return [
        bind(public, notifier_service_pb2_grpc, notifier_service_pb2, "NotifierService"),
        bind(internal, notifier_service_pb2_grpc, notifier_service_pb2, "NotifierInternalService"),
    ]


SERVICE = ServiceDefinition(
    name="notifier",
    build=build,
    migrations_dir=Path(__file__).parent / "migrations",
    streams=streams_for(
        events_pb2.NotificationSent,
        events_pb2.NotificationSuppressed,
        events_pb2.NotificationFailed,
    ),
)

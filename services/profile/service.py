"""How the kernel runs the profile service."""

from __future__ import annotations

from pathlib import Path

from kernel.bus import streams_for
from kernel.service import Binding, Runtime, ServiceDefinition, bind
from services.profile.servicer import ProfileInternalServicer, ProfileServicer
from tips.profile.v1 import events_pb2, profile_service_pb2, profile_service_pb2_grpc


async def build(runtime: Runtime) -> list[Binding]:
    """The servicers, wired to what the runtime provides."""
    # Not built yet: mypy sees the generated bases as abstract, and the
    # kernel answers their RPCs with UNIMPLEMENTED naming the RPC.
    public = ProfileServicer()  # type: ignore[abstract]
    internal = ProfileInternalServicer()  # type: ignore[abstract]
    return [
        bind(public, profile_service_pb2_grpc, profile_service_pb2, "ProfileService"),
        bind(internal, profile_service_pb2_grpc, profile_service_pb2, "ProfileInternalService"),
    ]


SERVICE = ServiceDefinition(
    name="profile",
    build=build,
    migrations_dir=Path(__file__).parent / "migrations",
    streams=streams_for(
        events_pb2.ProfileChanged, events_pb2.ConsentChanged, events_pb2.UserDeleted
    ),
)

"""How the kernel runs the auth service."""

from __future__ import annotations

from pathlib import Path

from kernel.bus import streams_for
from kernel.service import Binding, Runtime, ServiceDefinition, bind
from services.auth.servicer import AuthInternalServicer, AuthServicer
from tips.auth.v1 import auth_service_pb2, auth_service_pb2_grpc, events_pb2


async def build(runtime: Runtime) -> list[Binding]:
    """The servicers, wired to what the runtime provides."""
    # Not built yet: mypy sees the generated bases as abstract, and the
    # kernel answers their RPCs with UNIMPLEMENTED naming the RPC.
    public = AuthServicer()  # type: ignore[abstract]
    internal = AuthInternalServicer()  # type: ignore[abstract]
    return [
        bind(public, auth_service_pb2_grpc, auth_service_pb2, "AuthService"),
        bind(internal, auth_service_pb2_grpc, auth_service_pb2, "AuthInternalService"),
    ]


SERVICE = ServiceDefinition(
    name="auth",
    build=build,
    migrations_dir=Path(__file__).parent / "migrations",
    streams=streams_for(
        events_pb2.UserSignedUp, events_pb2.SessionRevoked, events_pb2.IdentityLinked
    ),
)

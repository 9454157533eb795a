"""How the kernel runs the ml_serving service."""

from __future__ import annotations

from kernel.service import Binding, Runtime, ServiceDefinition, bind
from services.ml_serving.servicer import MlServingInternalServicer
from tips.ml_serving.v1 import ml_serving_service_pb2, ml_serving_service_pb2_grpc


async def build(runtime: Runtime) -> list[Binding]:
    """The servicers, wired to what the runtime provides."""
    # Not built yet: mypy sees the generated bases as abstract, and the
    # kernel answers their RPCs with UNIMPLEMENTED naming the RPC.
    internal = MlServingInternalServicer()  # type: ignore[abstract]
    return [
        bind(
            internal,
            ml_serving_service_pb2_grpc,
            ml_serving_service_pb2,
            "MlServingInternalService",
        ),
    ]


SERVICE = ServiceDefinition(
    name="ml_serving",
    build=build,
    uses_db=False,
    uses_bus=False,
)

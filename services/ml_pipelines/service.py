"""How the kernel runs the ml_pipelines service."""

from __future__ import annotations

from pathlib import Path

from kernel.bus import streams_for
from kernel.service import Binding, Runtime, ServiceDefinition, bind
from services.ml_pipelines.servicer import MlPipelinesServicer
from tips.ml_pipelines.v1 import events_pb2, ml_pipelines_service_pb2, ml_pipelines_service_pb2_grpc


async def build(runtime: Runtime) -> list[Binding]:
    """The servicers, wired to what the runtime provides."""
    # Not built yet: mypy sees the generated bases as abstract, and the
    # kernel answers their RPCs with UNIMPLEMENTED naming the RPC.
    public = MlPipelinesServicer()  # type: ignore[abstract]
    return [
        bind(public, ml_pipelines_service_pb2_grpc, ml_pipelines_service_pb2, "MlPipelinesService"),
    ]


SERVICE = ServiceDefinition(
    name="ml_pipelines",
    build=build,
    migrations_dir=Path(__file__).parent / "migrations",
    streams=streams_for(events_pb2.ModelVersionPromoted, events_pb2.TrainingRunCompleted),
)

"""How the kernel runs the ml_serving service."""

from __future__ import annotations

import logging

from kernel.service import Binding, Runtime, ServiceDefinition, bind
from services.ml_serving.core import ModelRegistry
from services.ml_serving.servicer import MlServingInternalServicer
from services.ml_serving.settings import load_ml_serving_settings
from tips.ml_serving.v1 import ml_serving_service_pb2, ml_serving_service_pb2_grpc

log = logging.getLogger(__name__)


async def build(runtime: Runtime) -> list[Binding]:
    """The servicer over the configured model repository, every model loaded."""
    settings = load_ml_serving_settings(runtime.settings)
    registry = ModelRegistry(settings.ml_serving_model_repository)
    loaded = await registry.reload()
    log.info(
        "model repository %s: %d model(s) loaded",
        settings.ml_serving_model_repository,
        len(loaded),
    )
    internal = MlServingInternalServicer(
        registry,
        triton_url=settings.ml_serving_triton_url,
        triton_timeout_s=settings.ml_serving_triton_timeout_seconds,
        retry_s=settings.ml_serving_triton_retry_seconds,
    )
    runtime.cleanups.append(internal.close)
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

"""How the kernel runs the ml_pipelines service.

On start it connects to MLflow (the model registry), resumes unfinished
training runs and backfills, and spawns: the
outbox relay (ModelVersionPromoted, TrainingRunCompleted to TIPS_ML_PIPELINES),
the logged-data consumers (TipDecided + RewardAssigned joined into
``logged_decisions``), the export consumer (PolicyModelExported -> CANDIDATE
versions) and the erasure consumer. See docs/ml-pipelines.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kernel.bus import streams_for
from kernel.erasure import ErasureConsumer
from kernel.outbox import OutboxRelay
from kernel.service import Binding, Runtime, ServiceDefinition, bind
from services.ml_pipelines import logged, store
from services.ml_pipelines.consumers import ExportConsumer
from services.ml_pipelines.core.backfill import Backfiller
from services.ml_pipelines.core.registry import Registry
from services.ml_pipelines.core.training import Trainer
from services.ml_pipelines.servicer import MlPipelinesServicer
from services.ml_pipelines.settings import ml_pipelines_settings
from tips.ml_pipelines.v1 import events_pb2, ml_pipelines_service_pb2, ml_pipelines_service_pb2_grpc


async def build(runtime: Runtime) -> Sequence[Binding]:
    """The servicers, wired to what the runtime provides."""
    if runtime.db is None or runtime.bus is None:
        raise RuntimeError("the ml_pipelines service needs the database and the bus")
    settings = ml_pipelines_settings(runtime.settings)
    db, bus = runtime.db, runtime.bus
    registry = Registry(db, settings)
    await registry.open()  # MLflow, the registry: a new sqlite one gets its tables
    trainer = Trainer(db, settings, registry, runtime.spawn)
    backfiller = Backfiller(db, settings, runtime.spawn)
    runtime.spawn(OutboxRelay(db, bus, store.outbox).run())
    log_consumer = logged.LogConsumer(
        db, settings.ml_pipelines_decisions_durable, settings.ml_pipelines_rewards_durable
    )
    for task in log_consumer.tasks(bus):
        runtime.spawn(task)  # type: ignore[arg-type]
    runtime.spawn(ExportConsumer(db, registry, settings.ml_pipelines_exports_durable).run(bus))
    erasure = ErasureConsumer(
        db, store.processed_messages, settings.ml_pipelines_erasure_durable, logged.purge_user
    )
    runtime.spawn(erasure.run(bus))
    await trainer.resume()
    await backfiller.resume()
    servicer: Any = MlPipelinesServicer(registry, trainer, backfiller)
    return [
        bind(
            servicer, ml_pipelines_service_pb2_grpc, ml_pipelines_service_pb2, "MlPipelinesService"
        ),
    ]


SERVICE = ServiceDefinition(
    name="ml_pipelines",
    build=build,
    migrations_dir=Path(__file__).parent / "migrations",
    streams=streams_for(events_pb2.ModelVersionPromoted, events_pb2.TrainingRunCompleted),
)

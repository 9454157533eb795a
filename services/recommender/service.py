"""The recommender service.

On start it reloads the persisted user contexts into memory, starts the
``SignalRecorded`` consumer that keeps them current, and the outbox relay
that publishes ``TipDecided`` to ``TIPS_RECOMMENDER``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kernel.bus import streams_for
from kernel.outbox import OutboxRelay
from kernel.service import Binding, Runtime, ServiceDefinition, bind
from services.recommender import store
from services.recommender.consumer import DURABLE, ContextKeeper
from services.recommender.servicer import (
    RecommenderInternalServicer,
    RecommenderServicer,
    TipCatalogServicer,
)
from tips.recommender.v1 import (
    events_pb2,
    recommender_service_pb2,
    recommender_service_pb2_grpc,
    tip_catalog_service_pb2,
    tip_catalog_service_pb2_grpc,
)


def definition(durable: str = DURABLE) -> ServiceDefinition:
    """The service; ``durable`` names its signal consumer (tests on a shared NATS vary it)."""

    async def build(runtime: Runtime) -> Sequence[Binding]:
        if runtime.db is None or runtime.bus is None:
            raise RuntimeError("the recommender needs the database and the bus")
        contexts = ContextKeeper(runtime.db, durable)
        await contexts.load()
        runtime.spawn(contexts.run(runtime.bus))
        runtime.spawn(OutboxRelay(runtime.db, runtime.bus, store.outbox).run())
        rec, cat = recommender_service_pb2, tip_catalog_service_pb2
        rec_grpc, cat_grpc = recommender_service_pb2_grpc, tip_catalog_service_pb2_grpc
        return [
            bind(
                RecommenderServicer(runtime.db, contexts, runtime.settings),
                rec_grpc,
                rec,
                "RecommenderService",
            ),
            bind(RecommenderInternalServicer(), rec_grpc, rec, "RecommenderInternalService"),
            bind(TipCatalogServicer(), cat_grpc, cat, "TipCatalogService"),
        ]

    return ServiceDefinition(
        name="recommender",
        build=build,
        migrations_dir=Path(__file__).parent / "migrations",
        streams=streams_for(
            events_pb2.TipDecided, events_pb2.RewardAssigned, events_pb2.PolicyModelExported
        ),
    )


SERVICE = definition()

"""The recommender service.

On start it imports the shipped catalog file (once per catalog version),
loads the catalog, user contexts, decision history and policy statistics
into memory, loads the ONNX model (exporting a first one when there is
none), then runs in the background: the ``SignalRecorded`` consumer (context
and rewards), the TIPS_PROFILE consumers (preferences and consents), the
decision writer (group commit), the outbox relay, the reward sweeper, policy
snapshots, the catalog watcher and the optional export schedule.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kernel.bus import streams_for
from kernel.outbox import OutboxRelay
from kernel.service import Binding, Runtime, ServiceDefinition, bind
from services.recommender import store
from services.recommender.catalog_servicer import TipCatalogServicer
from services.recommender.catalog_store import CatalogKeeper
from services.recommender.consumers import DURABLE, ContextKeeper
from services.recommender.core.decisions import DecisionEngine
from services.recommender.core.learning import Learner
from services.recommender.core.peers import PeerDecisions
from services.recommender.erasure import eraser, forgetter
from services.recommender.history import HistoryKeeper
from services.recommender.profiles import ProfileCache
from services.recommender.servicer import RecommenderInternalServicer, RecommenderServicer
from services.recommender.settings import load_recommender_settings
from services.recommender.writer import DecisionWriter
from tips.recommender.v1 import (
    events_pb2,
    recommender_service_pb2,
    recommender_service_pb2_grpc,
    tip_catalog_service_pb2,
    tip_catalog_service_pb2_grpc,
)


def definition(durable: str = DURABLE) -> ServiceDefinition:
    """The service; ``durable`` names its consumers (tests on a shared NATS vary it)."""

    async def build(runtime: Runtime) -> Sequence[Binding]:
        if runtime.db is None or runtime.bus is None:
            raise RuntimeError("the recommender needs the database and the bus")
        db, bus = runtime.db, runtime.bus
        settings = load_recommender_settings(runtime.settings)
        catalog = CatalogKeeper(db)
        await catalog.seed(settings.recommender_catalog_file)
        await catalog.reload()
        history = HistoryKeeper()
        await history.load(db)
        learner = Learner(settings, db, store.outbox, history)
        await learner.start()
        contexts = ContextKeeper(db, durable, learner=learner, history=history)
        await contexts.load()
        profiles = ProfileCache(settings)
        writer = DecisionWriter(db, store.outbox)
        engine = DecisionEngine(settings, catalog, contexts, profiles, history, learner, writer)
        runtime.spawn(writer.run())
        runtime.spawn(contexts.run(bus))
        runtime.spawn(contexts.follow())  # other replicas' context changes
        forget = forgetter(contexts, history, profiles)
        runtime.spawn(profiles.run(bus, forget))  # also every replica's memory on erasure
        relay = OutboxRelay(db, bus, store.outbox, linger=settings.recommender_relay_linger_seconds)
        runtime.spawn(relay.run())
        runtime.spawn(learner.sweep())
        runtime.spawn(learner.follow(bus))  # other replicas' rewards and reactions
        runtime.spawn(learner.follow_promotions(bus))  # ml_pipelines' promoted versions
        runtime.spawn(PeerDecisions(db, history).run(bus))  # and their decisions
        runtime.spawn(learner.reconcile())
        runtime.spawn(learner.snapshots())
        runtime.spawn(learner.export_schedule())
        runtime.spawn(catalog.watch(settings.recommender_catalog_refresh_seconds))
        runtime.spawn(eraser(db, durable, forget).run(bus))
        runtime.cleanups.append(writer.close)
        runtime.cleanups.append(_final_snapshot(learner))
        rec, cat = recommender_service_pb2, tip_catalog_service_pb2
        rec_grpc, cat_grpc = recommender_service_pb2_grpc, tip_catalog_service_pb2_grpc
        return [
            bind(RecommenderServicer(db, engine, settings), rec_grpc, rec, "RecommenderService"),
            bind(
                RecommenderInternalServicer(db, engine),
                rec_grpc,
                rec,
                "RecommenderInternalService",
            ),
            bind(TipCatalogServicer(db, catalog), cat_grpc, cat, "TipCatalogService"),
        ]

    return ServiceDefinition(
        name="recommender",
        build=build,
        migrations_dir=Path(__file__).parent / "migrations",
        streams=streams_for(
            events_pb2.TipDecided, events_pb2.RewardAssigned, events_pb2.PolicyModelExported
        ),
    )


def _final_snapshot(learner: Learner):  # type: ignore[no-untyped-def]
    async def save() -> None:
        await learner.snapshot()

    return save


SERVICE = definition()

"""The recommender serves the version ml_pipelines promotes (``ModelVersionPromoted``),
with that version's statistics, and a restarted replica goes on serving it.

The promoted version is written as ml_pipelines writes one (``model.onnx`` and
``policy.npz`` in its own repository) and announced on the bus as its outbox
relay announces it; the recommender takes it into its repository.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest

from kernel.bus import streams_for
from kernel.migrations import migrate
from kernel.server import ServiceServer
from kernel.settings import Settings
from kernel.timestamps import timestamp
from policy import bandit, features, onnx_export
from services.ml_pipelines.service import SERVICE as ML_PIPELINES
from services.ml_pipelines.settings import MlPipelinesSettings
from services.recommender.service import definition
from services.recommender.settings import RecommenderSettings
from tests.support.recommender_rig import Rig, events_and_recommender
from tests.support.tokens import as_user
from tests.support.waiting import eventually, stream_events
from tips.ml_pipelines.v1 import events_pb2 as ml_events
from tips.ml_pipelines.v1 import ml_pipelines_service_pb2 as ml_pb
from tips.ml_pipelines.v1 import ml_pipelines_service_pb2_grpc as ml_grpc
from tips.ml_pipelines.v1 import model_pb2
from tips.recommender.v1 import events_pb2 as rec_events
from tips.recommender.v1 import recommender_service_pb2 as rec
from tips.recommender.v1 import recommender_service_pb2_grpc as rec_grpc

pytestmark = pytest.mark.integration

ADMIN = as_user("u_admin", "admin")


@pytest.fixture
async def rig(
    settings: Settings,
    nats_url: str,
    create_database: Callable[[], Awaitable[str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[Rig, Path, Settings, str]]:
    # A database of its own: the promoted statistics must not reach other tests' policy.
    database_url = await create_database()
    settings = settings.model_copy(update={"database_url": database_url})
    models = tmp_path_factory.mktemp("promotion-models")
    # A model of its own per test: promotions stay on the stream, and every
    # recommender reads them from its start.
    model = f"promo_{secrets.token_hex(3)}"
    async with events_and_recommender(
        settings, nats_url, database_url, models, recommender_model_name=model
    ) as started:
        await started.bus.ensure_streams(streams_for(ml_events.ModelVersionPromoted))
        yield started, models, settings, model


async def _status(channel: grpc.aio.Channel) -> rec.GetPolicyStatusResponse:
    internal = rec_grpc.RecommenderInternalServiceStub(channel)
    return await internal.GetPolicyStatus(rec.GetPolicyStatusRequest(), timeout=10)


async def _decide(channel: grpc.aio.Channel, nats_url: str) -> rec_events.TipDecided:
    """A new user's one-tip decision, as its ``TipDecided`` event logged it."""
    user = f"u_{secrets.token_hex(5)}"
    stub = rec_grpc.RecommenderServiceStub(channel)
    await stub.DecideTips(
        rec.DecideTipsRequest(parent=f"users/{user}", page_size=1),
        metadata=as_user(user),
        timeout=10,
    )

    async def decided() -> list[rec_events.TipDecided]:
        events = await stream_events(
            nats_url, "TIPS_RECOMMENDER", "tips.recommender.v1.tip_decided", rec_events.TipDecided
        )
        return [e for e in events if e.user == f"users/{user}"]

    [event] = await eventually(decided, lambda events: len(events) == 1, within=30)
    return event


def _probability(event: rec_events.TipDecided, catalog_tip: str) -> float:
    [candidate] = [c for c in event.candidates if c.catalog_tip == catalog_tip]
    return candidate.probability


def _trained_version(registry: Path, model: str, version: int, favourite: str) -> Path:
    """A version trained to favour one tip, laid out as ml_pipelines lays one out."""
    policy = bandit.Policy()
    for _ in range(300):
        policy.update(favourite, np.zeros(policy.dim), 1.0)
    directory = registry / model / str(version)
    directory.mkdir(parents=True)
    onnx.save(onnx_export.build_model(policy), str(directory / "model.onnx"))
    (directory / onnx_export.STATE_FILE).write_bytes(policy.state())
    return directory / "model.onnx"


async def _promote(rig: Rig, model: str, version: int, artifact: Path) -> str:
    name = f"models/{model}/versions/{version}"
    event = ml_events.ModelVersionPromoted(
        event_id=str(uuid.uuid4()),
        occur_time=timestamp(datetime.now(UTC)),
        model=f"models/{model}",
        model_version=name,
        artifact_uri=artifact.as_uri(),
    )
    await rig.bus.publish(event, msg_id=event.event_id)
    return name


async def test_the_promoted_version_serves_with_its_statistics_and_outlives_a_restart(
    rig: tuple[Rig, Path, Settings, str], nats_url: str, tmp_path: Path
) -> None:
    started, models, settings, model = rig
    async with grpc.aio.insecure_channel(started.recommender.address) as channel:
        before = await _decide(channel, nats_url)
        assert len(before.candidates) >= 3, before.candidates
        # The tip the serving policy likes least becomes the promoted version's favourite.
        favourite = min(before.candidates, key=lambda c: c.probability).catalog_tip
        assert _probability(before, favourite) < 0.5

        # An unreadable version is not served; the next promotion still is.
        await _promote(started, model, 40, tmp_path / "nowhere" / "model.onnx")
        registry = tmp_path / "registry"
        artifact = _trained_version(registry, model, 41, favourite.removeprefix("catalogTips/"))
        promoted = await _promote(started, model, 41, artifact)

        status = await eventually(
            lambda: _status(channel), lambda s: s.model_version == promoted, within=30
        )
        assert (models / model / "41" / onnx_export.STATE_FILE).is_file()  # taken in
        assert not (models / model / "40").exists()
        assert status.online_update_count == 0

        after = await _decide(channel, nats_url)
        assert after.model_version == promoted
        assert _probability(after, favourite) > 0.9  # the version's statistics decide

    # A restarted process (a second one on the same database) serves the same
    # version and does not apply the promotion again.
    rec_settings = RecommenderSettings(
        **{**settings.model_dump(), "log_format": "text", "events_addr": started.events.address},
        recommender_model_repository=str(models),
        recommender_model_name=model,
    )
    server = ServiceServer(definition(started.durable), rec_settings, port=0)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            assert (await _status(channel)).model_version == promoted
            again = await _decide(channel, nats_url)
            assert again.model_version == promoted
            assert _probability(again, favourite) > 0.9
    finally:
        await server.stop(grace=0)


async def test_a_version_promoted_in_the_registry_serves(
    rig: tuple[Rig, Path, Settings, str], nats_url: str, tmp_path: Path
) -> None:
    """The whole way: ml_pipelines registers a trained version in MLflow and
    promotes it (its outbox, its relay, the bus); the recommender serves it."""
    started, models, settings, model = rig
    registry = models  # one repository, as compose and Kubernetes mount it
    tag = secrets.token_hex(3)
    ml_settings = MlPipelinesSettings(
        **{**settings.model_dump(), "log_format": "text"},
        ml_pipelines_model_repository=str(registry),
        ml_pipelines_mlflow_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        ml_pipelines_decisions_durable=f"mlp-decisions-{tag}",
        ml_pipelines_rewards_durable=f"mlp-rewards-{tag}",
        ml_pipelines_exports_durable=f"mlp-exports-{tag}",
        ml_pipelines_erasure_durable=f"mlp-erasure-{tag}",
    )
    await migrate(ml_settings, [ML_PIPELINES])
    ml_server = ServiceServer(ML_PIPELINES, ml_settings, port=0)
    await ml_server.start()
    try:
        async with (
            grpc.aio.insecure_channel(started.recommender.address) as channel,
            grpc.aio.insecure_channel(ml_server.address) as ml_channel,
        ):
            before = await _decide(channel, nats_url)
            favourite = min(before.candidates, key=lambda c: c.probability).catalog_tip
            trained = _trained_version(
                registry / "incoming", model, 1, favourite.removeprefix("catalogTips/")
            )
            ml = ml_grpc.MlPipelinesServiceStub(ml_channel)
            await ml.CreateModel(
                ml_pb.CreateModelRequest(
                    model=model_pb2.Model(algorithm=bandit.ALGORITHM), model_id=model
                ),
                metadata=ADMIN,
                timeout=30,
            )
            created = await ml.CreateModelVersion(
                ml_pb.CreateModelVersionRequest(
                    parent=f"models/{model}",
                    model_version=model_pb2.ModelVersion(
                        artifact_uri=trained.as_uri(),
                        feature_schema_version=features.SCHEMA_VERSION,
                    ),
                ),
                metadata=ADMIN,
                timeout=30,
            )
            name = created.model_version.name
            await ml.PromoteModelVersion(
                ml_pb.PromoteModelVersionRequest(
                    name=name, force=True, reason="the recommender's test"
                ),
                metadata=ADMIN,
                timeout=30,
            )
            await eventually(lambda: _status(channel), lambda s: s.model_version == name, within=60)
            after = await _decide(channel, nats_url)
            assert after.model_version == name
            assert _probability(after, favourite) > 0.9
    finally:
        await ml_server.stop(grace=0)

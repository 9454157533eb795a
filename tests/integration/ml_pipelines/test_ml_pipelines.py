"""ml_pipelines against real PostgreSQL and NATS, services in process.

The test plays the recommender (TipDecided / RewardAssigned /
PolicyModelExported on TIPS_RECOMMENDER) and the profile service (UserDeleted);
the events service runs for real for backfills. Models go to a temporary
repository, never the repo's models/, and the registry is a real MLflow on a
sqlite file in a temporary directory, read back here with MLflow's own client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import asyncpg
import grpc
import nats
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.type import interval_pb2
from mlflow import MlflowClient

from kernel.bus import Bus, streams_for, subject_of
from kernel.errors import error_info, field_violations
from kernel.migrations import migrate
from kernel.server import ServiceServer
from kernel.settings import Settings
from policy import bandit, features, onnx_export
from services.events.service import definition as events_definition
from services.events.settings import EventsSettings
from services.ml_pipelines import offline
from services.ml_pipelines.service import SERVICE
from services.ml_pipelines.settings import MlPipelinesSettings
from tests.support.tokens import as_user
from tests.support.waiting import eventually as wait_for
from tips.events.v1 import events_service_pb2 as ev
from tips.events.v1 import events_service_pb2_grpc as ev_grpc
from tips.events.v1 import signal_pb2
from tips.ml_pipelines.v1 import events_pb2 as ml_events
from tips.ml_pipelines.v1 import feature_backfill_pb2, model_pb2, training_run_pb2
from tips.ml_pipelines.v1 import ml_pipelines_service_pb2 as pb
from tips.ml_pipelines.v1 import ml_pipelines_service_pb2_grpc as pb_grpc
from tips.profile.v1 import events_pb2 as profile_events
from tips.recommender.v1 import context_pb2
from tips.recommender.v1 import events_pb2 as rec_events

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

STREAMS = ("TIPS_EVENTS", "TIPS_RECOMMENDER", "TIPS_PROFILE", "TIPS_ML_PIPELINES")
ADMIN = as_user("u_admin", "admin")
S = model_pb2.ModelVersionState
CATALOG = json.loads((Path(__file__).resolve().parents[3] / "policy/data/tips.v1.json").read_text())


def _first(category: str) -> str:
    return next(str(t["id"]) for t in CATALOG["tips"] if t["category"] == category)


MOVE, SLEEP, FOCUS, WATER = (
    _first("movement"),
    _first("sleep"),
    _first("focus"),
    _first("hydration"),
)
ARMS = (MOVE, SLEEP, FOCUS, WATER)


def _p_reward(arm: str, hour: float) -> float:
    """The synthetic users: walks help mornings, wind-down helps evenings."""
    if arm == MOVE:
        return 0.9 if hour < 12 else 0.05
    if arm == SLEEP:
        return 0.9 if hour >= 18 else 0.05
    return 0.3


def ts(value: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(value)
    return out


def window(start: datetime, end: datetime) -> interval_pb2.Interval:
    return interval_pb2.Interval(start_time=ts(start), end_time=ts(end))


@dataclass
class Env:
    ml: pb_grpc.MlPipelinesServiceStub
    events: ev_grpc.EventsServiceStub
    bus: Bus
    db: asyncpg.Connection
    repo: Path
    nats_url: str
    mlflow: MlflowClient  # blocking: call it through asyncio.to_thread


async def _existing(nats_url: str) -> set[str]:
    nc = await nats.connect(nats_url, connect_timeout=2, max_reconnect_attempts=1)
    try:
        js, found = nc.jetstream(), set()
        for name in STREAMS:
            with contextlib.suppress(Exception):
                await js.stream_info(name)
                found.add(name)
        return found
    finally:
        await nc.close()


@pytest.fixture(scope="module")
async def env(
    settings: Settings, nats_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Env]:
    before = await _existing(nats_url)
    events_def = events_definition(f"events-erasure-m{secrets.token_hex(3)}")
    await migrate(settings, [events_def, SERVICE])
    bus = await Bus.connect(settings, "ml-pipelines-test")
    await bus.ensure_streams(
        streams_for(
            rec_events.TipDecided, rec_events.RewardAssigned, rec_events.PolicyModelExported
        )
        + streams_for(profile_events.UserDeleted)
    )
    events_settings = EventsSettings(
        events_consent_gate=False,  # no profile service: gate tested in test_events_consent.py
        **{**settings.model_dump(), "log_format": "text"},
        events_relay_process=False,
    )
    events_server = ServiceServer(events_def, events_settings, port=0)
    await events_server.start()
    repo = tmp_path_factory.mktemp("models")
    mlflow_uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    tag = secrets.token_hex(3)
    ml_settings = MlPipelinesSettings(
        **{**settings.model_dump(), "events_addr": events_server.address, "log_format": "text"},
        ml_pipelines_model_repository=str(repo),
        ml_pipelines_mlflow_uri=mlflow_uri,
        ml_pipelines_min_eval_decisions=50,
        ml_pipelines_keep_exports=2,
        ml_pipelines_train_chunk=200,
        ml_pipelines_decisions_durable=f"mlp-decisions-{tag}",
        ml_pipelines_rewards_durable=f"mlp-rewards-{tag}",
        ml_pipelines_exports_durable=f"mlp-exports-{tag}",
        ml_pipelines_erasure_durable=f"mlp-erasure-{tag}",
    )
    ml_server = ServiceServer(SERVICE, ml_settings, port=0)
    db = await asyncpg.connect(database_url)
    try:
        await ml_server.start()
        async with (
            grpc.aio.insecure_channel(ml_server.address) as ml_channel,
            grpc.aio.insecure_channel(events_server.address) as ev_channel,
        ):
            yield Env(
                pb_grpc.MlPipelinesServiceStub(ml_channel),
                ev_grpc.EventsServiceStub(ev_channel),
                bus,
                db,
                repo,
                nats_url,
                MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri),
            )
    finally:
        await ml_server.stop(grace=0)
        await events_server.stop(grace=0)
        await bus.close()
        await db.close()
        nc = await nats.connect(nats_url, connect_timeout=2, max_reconnect_attempts=1)
        try:
            for name in set(STREAMS) - before:
                with contextlib.suppress(Exception):
                    await nc.jetstream().delete_stream(name)
        finally:
            await nc.close()


async def eventually(check: Callable[[], Awaitable[Any]], within: float = 30.0) -> Any:
    """The first truthy value of ``check`` (``tests.support.waiting.eventually``)."""
    return await wait_for(check, bool, within=within)


# --- synthetic logged data ---------------------------------------------------------------


Logged = tuple[rec_events.TipDecided, rec_events.RewardAssigned]


def decision(user: str, at: datetime, hour: float, rng: np.random.Generator) -> Logged:
    """A uniformly logged decision among ARMS and its reward."""
    return answer(user, at, hour, rng, size=1)[0]


def answer(
    user: str, at: datetime, hour: float, rng: np.random.Generator, size: int
) -> list[Logged]:
    """A uniformly logged answer of ``size`` tips, logged as the recommender does: the
    picks drawn one after another without replacement, each its own TipDecided with
    its rank, the candidates left (the earlier picks out) and its propensity among them.
    """
    out = []
    remaining = list(ARMS)
    for rank in range(size):
        tip = f"users/{user}/tips/{secrets.token_hex(6)}"
        arm = remaining[int(rng.integers(0, len(remaining)))]
        reward = 1.0 if rng.random() < _p_reward(arm, hour) else 0.0
        propensity = 1.0 / len(remaining)
        decided = rec_events.TipDecided(
            event_id=tip,
            occur_time=ts(at),
            user=f"users/{user}",
            tip=tip,
            catalog_tip=f"catalogTips/{arm}",
            candidates=[
                context_pb2.CandidateScore(
                    catalog_tip=f"catalogTips/{a}", score=0.0, probability=propensity
                )
                for a in remaining
            ],
            propensity=propensity,
            context_features=[
                context_pb2.ContextFeature(name="hour_local", value=hour),
                context_pb2.ContextFeature(name="weekday", value=2.0),
                context_pb2.ContextFeature(name="free_minutes", value=float("nan")),
            ],
            feature_schema_version=f"features-v1-d{features.DIM}",
            model_version="",
            policy_name=bandit.ALGORITHM,
            rank=rank,
            catalog_version="v1",
            expire_time=ts(at + timedelta(hours=2)),
        )
        rewarded = rec_events.RewardAssigned(
            event_id=f"reward:{tip}",
            occur_time=ts(at + timedelta(minutes=5)),
            user=f"users/{user}",
            tip=tip,
            catalog_tip=f"catalogTips/{arm}",
            reward=reward,
            source=rec_events.REWARD_SOURCE_REACTION,
            decide_time=ts(at),
            propensity=propensity,
        )
        out.append((decided, rewarded))
        remaining.remove(arm)
    return out


async def publish(bus: Bus, messages: list[Any]) -> None:
    """Publishes in order of the list, up to 200 awaited at once."""
    for begin in range(0, len(messages), 200):
        await asyncio.gather(
            *(bus.publish(m, msg_id=m.event_id) for m in messages[begin : begin + 200])
        )


async def joined(db: asyncpg.Connection, where: str, *args: Any) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM ml_pipelines.logged_decisions"
            f" WHERE decided AND reward IS NOT NULL AND {where}",
            *args,
        )
    )


async def log_decisions(
    env: Env, start: datetime, count: int, seed: int, slate_every: int = 0
) -> str:
    """Publishes ``count`` decisions + rewards from ``start`` on; waits until joined.

    Every ``slate_every``-th decision (none when 0) is an answer of 3 tips.
    """
    rng = np.random.default_rng(seed)
    user = f"u_{secrets.token_hex(4)}"
    pairs = [
        pair
        for i in range(count)
        for pair in answer(
            user,
            start + timedelta(seconds=30 * i),
            float(rng.uniform(6, 23.5)),
            rng,
            size=3 if slate_every and i % slate_every == 0 else 1,
        )
    ]
    await publish(env.bus, [d for d, _ in pairs] + [r for _, r in pairs])

    async def done() -> bool:
        return await joined(env.db, "user_id = $1", user) == len(pairs)

    await eventually(done, 60)
    return user


def inverted_policy_file(env: Env, start: datetime) -> Path:
    """A policy trained on 1 - reward: a clearly worse model file inside the repository."""
    rng = np.random.default_rng(99)
    book = offline.TipBook.from_catalog_file(
        Path(__file__).resolve().parents[3] / "policy/data/tips.v1.json"
    )
    policy = bandit.Policy()
    for _i in range(800):
        hour = float(rng.uniform(6, 23.5))
        d, r = decision("u_x", start, hour, rng)
        row = offline.LoggedRow(
            tip=d.tip, user_id="u_x", decide_time=start, action=d.catalog_tip.split("/")[1],
            propensity=0.25, candidates=ARMS, context={"hour_local": hour, "weekday": 2.0},
            reward=1.0 - r.reward, model_version="", rank=0,
        )  # fmt: skip
        rnd = book.round(row)
        assert rnd is not None
        offline.train_step(policy, [rnd])
    path = env.repo / "incoming" / f"bad-{secrets.token_hex(3)}.onnx"
    path.parent.mkdir(exist_ok=True)
    onnx.save(onnx_export.build_model(policy), str(path))
    return path


# --- tests -----------------------------------------------------------------------------------


async def test_admin_scope_required(env: Env) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.ml.ListModels(pb.ListModelsRequest(), metadata=as_user("u_1"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.ml.ListTrainingRuns(pb.ListTrainingRunsRequest())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.ml.CreateFeatureBackfill(
            pb.CreateFeatureBackfillRequest(), metadata=as_user("u_1")
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_bad_inputs_name_fields(env: Env) -> None:
    async def violations(call: Awaitable[Any]) -> dict[str, str]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return field_violations(err.value)

    model = model_pb2.Model(algorithm=bandit.ALGORITHM)
    assert "model_id" in await violations(
        env.ml.CreateModel(pb.CreateModelRequest(model=model, model_id="Bad-Id"), metadata=ADMIN)
    )
    assert "model.algorithm" in await violations(
        env.ml.CreateModel(
            pb.CreateModelRequest(model=model_pb2.Model(algorithm="vw"), model_id="ok_model"),
            metadata=ADMIN,
        )
    )
    mid = f"m_{secrets.token_hex(3)}"
    await env.ml.CreateModel(pb.CreateModelRequest(model=model, model_id=mid), metadata=ADMIN)
    now = datetime.now(UTC)
    run = training_run_pb2.TrainingRun(model=f"models/{mid}", params={"alpha": "x", "nope": "1"})
    bad = await violations(
        env.ml.CreateTrainingRun(pb.CreateTrainingRunRequest(training_run=run), metadata=ADMIN)
    )
    assert "training_run.data_window" in bad
    run.data_window.CopyFrom(window(now - timedelta(days=1), now + timedelta(days=1)))
    bad = await violations(
        env.ml.CreateTrainingRun(pb.CreateTrainingRunRequest(training_run=run), metadata=ADMIN)
    )
    assert "training_run.data_window.end_time" in bad
    run.data_window.CopyFrom(window(now - timedelta(days=1), now))
    bad = await violations(
        env.ml.CreateTrainingRun(pb.CreateTrainingRunRequest(training_run=run), metadata=ADMIN)
    )
    assert set(bad) == {"training_run.params[alpha]", "training_run.params[nope]"}
    version = model_pb2.ModelVersion(
        artifact_uri="file:///etc/passwd", feature_schema_version=f"features-v1-d{features.DIM}"
    )
    bad = await violations(
        env.ml.CreateModelVersion(
            pb.CreateModelVersionRequest(parent=f"models/{mid}", model_version=version),
            metadata=ADMIN,
        )
    )
    assert "inside the model repository" in bad["model_version.artifact_uri"]
    wrong = env.repo / "incoming" / "wrong_shape.onnx"
    wrong.parent.mkdir(exist_ok=True)
    onnx.save(onnx_export.build_model(bandit.Policy(dim=7)), str(wrong))
    version.artifact_uri = wrong.as_uri()
    bad = await violations(
        env.ml.CreateModelVersion(
            pb.CreateModelVersionRequest(parent=f"models/{mid}", model_version=version),
            metadata=ADMIN,
        )
    )
    assert f"[K, {features.DIM}]" in bad["model_version.artifact_uri"]
    bad = await violations(
        env.ml.EvaluateModelVersion(
            pb.EvaluateModelVersionRequest(name=f"models/{mid}/versions/x"), metadata=ADMIN
        )
    )
    assert "name" in bad
    bad = await violations(
        env.ml.CreateFeatureBackfill(
            pb.CreateFeatureBackfillRequest(
                feature_backfill=feature_backfill_pb2.FeatureBackfill(
                    feature_schema_version="daily-v1",
                    feature_names=["steps_total", "nope"],
                    users=["people/1"],
                )
            ),
            metadata=ADMIN,
        )
    )
    assert {"feature_backfill.feature_names[1]", "feature_backfill.users[0]"} <= set(bad)


async def test_logged_data_join_is_idempotent_and_erased(env: Env) -> None:
    rng = np.random.default_rng(3)
    user = f"u_{secrets.token_hex(4)}"
    at = datetime.now(UTC) - timedelta(hours=1)
    first, second = decision(user, at, 9.0, rng), decision(user, at, 20.0, rng)
    # One reward arrives before its decision: the join holds either way.
    await publish(env.bus, [first[0], second[1], first[1], second[0]])
    await publish(env.bus, [first[0], first[1]])  # redelivered copies (new stream messages)
    await publish(
        env.bus,
        [rec_events.TipDecided(**{**_fields(first[0]), "event_id": first[0].event_id + ":dup"})],
    )

    async def both() -> bool:
        return await joined(env.db, "user_id = $1", user) == 2

    await eventually(both)
    row = await env.db.fetchrow(
        "SELECT * FROM ml_pipelines.logged_decisions WHERE tip = $1", first[0].tip
    )
    assert row["propensity"] == 0.25 and row["rank"] == 0
    assert row["catalog_tip"] == first[0].catalog_tip.removeprefix("catalogTips/")
    assert row["reward"] == first[1].reward
    assert json.loads(row["context"])["hour_local"] == 9.0
    assert json.loads(row["context"])["free_minutes"] is None  # NaN is unknown
    assert [c[0] for c in json.loads(row["candidates"])] == list(ARMS)
    count = await env.db.fetchval(
        "SELECT count(*) FROM ml_pipelines.logged_decisions WHERE user_id = $1", user
    )
    assert count == 2

    await env.bus.publish(
        profile_events.UserDeleted(
            event_id=f"del-{user}",
            occur_time=ts(datetime.now(UTC)),
            user=f"users/{user}",
            erasure=f"users/{user}/erasure",
        ),
        msg_id=f"del-{user}",
    )

    async def gone() -> bool:
        n = await env.db.fetchval(
            "SELECT count(*) FROM ml_pipelines.logged_decisions WHERE user_id = $1", user
        )
        return n == 0

    await eventually(gone)
    # A late reward (and a late decision) of the erased user recreate nothing.
    late = decision(user, at, 10.0, rng)
    await publish(env.bus, [late[1], late[0]])
    marker = decision(f"u_{secrets.token_hex(4)}", at, 10.0, rng)
    await publish(env.bus, [marker[0], marker[1]])

    async def marker_joined() -> bool:
        return await joined(env.db, "tip = $1", marker[0].tip) == 1

    await eventually(marker_joined)  # consumed after the late ones (same durables, in order)
    assert (
        await env.db.fetchval(
            "SELECT count(*) FROM ml_pipelines.logged_decisions WHERE user_id = $1", user
        )
        == 0
    )


def _fields(message: Any) -> dict[str, Any]:
    return {f.name: v for f, v in message.ListFields()}


async def _get_version(env: Env, name: str) -> model_pb2.ModelVersion:
    response = await env.ml.GetModelVersion(pb.GetModelVersionRequest(name=name), metadata=ADMIN)
    return response.model_version


async def _evaluate(env: Env, name: str, start: datetime, end: datetime) -> Any:
    response = await env.ml.EvaluateModelVersion(
        pb.EvaluateModelVersionRequest(name=name, data_window=window(start, end)),
        metadata=ADMIN,
        timeout=60,
    )
    return response.evaluation


async def _promote(env: Env, name: str, force: bool = False, reason: str = "") -> Any:
    response = await env.ml.PromoteModelVersion(
        pb.PromoteModelVersionRequest(name=name, force=force, reason=reason), metadata=ADMIN
    )
    return response.model_version


async def mlflow_version(env: Env, model: str, version: int) -> Any:
    """The MLflow model version registered as ``models/{model}/versions/{version}``."""
    found = await asyncio.to_thread(
        env.mlflow.search_model_versions,
        f"name = '{model}' AND tags.`tips.version` = '{version}'",
    )
    assert len(found) == 1, found
    return found[0]


def promoted_file(event: ml_events.ModelVersionPromoted) -> Path:
    """The event's ``file://`` artifact: model.onnx with its policy.npz beside it."""
    uri = urlparse(event.artifact_uri)
    assert uri.scheme == "file", event.artifact_uri
    path = Path(uri.path)
    assert path.name == "model.onnx" and path.is_file(), path
    return path


async def _refused(env: Env, name: str, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _promote(env, name)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(err.value)
    assert info is not None and info.reason == reason, err.value.details()


async def test_training_evaluation_and_promotion(env: Env) -> None:
    # This test's decisions live in their own time window, away from other tests'.
    start = datetime.now(UTC) - timedelta(days=10)
    end = start + timedelta(days=1)
    # One decision in four is a 3-tip answer: 300 answers add 600 later picks.
    user = await log_decisions(env, start, 1200, seed=5, slate_every=4)
    ranks = await env.db.fetch(
        "SELECT rank, count(*) AS n, min(propensity) AS p FROM ml_pipelines.logged_decisions"
        " WHERE user_id = $1 GROUP BY rank ORDER BY rank",
        user,
    )
    assert [(r["rank"], r["n"]) for r in ranks] == [(0, 1200), (1, 300), (2, 300)]
    assert [r["p"] for r in ranks] == [0.25, 1 / 3, 0.5]  # conditional on the earlier picks
    mid = f"tp_{secrets.token_hex(3)}"
    await env.ml.CreateModel(
        pb.CreateModelRequest(model=model_pb2.Model(algorithm=bandit.ALGORITHM), model_id=mid),
        metadata=ADMIN,
    )
    schema = f"features-v1-d{features.DIM}"

    async def register(path: Path, request_id: str = "") -> model_pb2.ModelVersion:
        response = await env.ml.CreateModelVersion(
            pb.CreateModelVersionRequest(
                parent=f"models/{mid}",
                model_version=model_pb2.ModelVersion(
                    artifact_uri=path.as_uri(), feature_schema_version=schema
                ),
                request_id=request_id,
            ),
            metadata=ADMIN,
        )
        return response.model_version

    # v1: a bad policy, first of its model: no baseline -> INCONCLUSIVE, promotable.
    v1 = await register(inverted_policy_file(env, start))
    assert v1.name == f"models/{mid}/versions/1" and v1.state == S.MODEL_VERSION_STATE_CANDIDATE
    assert (env.repo / mid / "1" / "model.onnx").is_file()
    await _refused(env, v1.name, "NOT_EVALUATED")
    first = await _evaluate(env, v1.name, start, end)
    assert first.verdict == model_pb2.EVALUATION_VERDICT_INCONCLUSIVE
    # First picks only: the 600 later picks are left out of the evaluation.
    assert first.decision_count == 1200 and not first.baseline_version
    assert (await _promote(env, v1.name)).state == S.MODEL_VERSION_STATE_PROMOTED
    # Nothing pins it in Triton: the recommender asks for the version it serves.
    assert "all: {}" in (env.repo / mid / "config.pbtxt").read_text()

    # v2: trained offline from the log.
    run = training_run_pb2.TrainingRun(
        model=f"models/{mid}", data_window=window(start, end), params={"alpha": "0.3"}
    )
    created = await env.ml.CreateTrainingRun(
        pb.CreateTrainingRunRequest(
            training_run=run, training_run_id=f"run-{mid}".replace("_", "-")
        ),
        metadata=ADMIN,
    )
    assert created.training_run.state in (
        training_run_pb2.TRAINING_RUN_STATE_QUEUED, training_run_pb2.TRAINING_RUN_STATE_RUNNING
    )  # fmt: skip
    run_name = created.training_run.name
    # A retry with the same id and content returns the same run.
    again = await env.ml.CreateTrainingRun(
        pb.CreateTrainingRunRequest(training_run=run, training_run_id=run_name.split("/")[1]),
        metadata=ADMIN,
    )
    assert again.training_run.name == run_name
    # Other content under the same id is refused, and the first run is untouched.
    other = training_run_pb2.TrainingRun(
        model=f"models/{mid}", data_window=window(start, end), params={"alpha": "0.9"}
    )
    with pytest.raises(grpc.aio.AioRpcError) as clash:
        await env.ml.CreateTrainingRun(
            pb.CreateTrainingRunRequest(training_run=other, training_run_id=run_name.split("/")[1]),
            metadata=ADMIN,
        )
    assert clash.value.code() == grpc.StatusCode.ALREADY_EXISTS

    async def finished() -> training_run_pb2.TrainingRun | None:
        got = await env.ml.GetTrainingRun(pb.GetTrainingRunRequest(name=run_name), metadata=ADMIN)
        r = got.training_run
        return r if r.state == training_run_pb2.TRAINING_RUN_STATE_SUCCEEDED else None

    trained = await eventually(finished, 120)
    assert trained.progress_fraction == 1.0
    assert trained.metrics["decisions"] == 1800  # training learns from every rank
    assert trained.model_version == f"models/{mid}/versions/2"
    model_file = env.repo / mid / "2" / "model.onnx"
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    scores = session.run(["scores"], {"rows": np.zeros((5, features.DIM), np.float32)})[0]
    assert scores.shape == (5,)
    v2 = await _get_version(env, trained.model_version)
    assert v2.state == S.MODEL_VERSION_STATE_CANDIDATE and v2.training_run == run_name

    # The training run is an MLflow run (params, metrics after every chunk of 200
    # rows, the version's files), and v2 is registered from it.
    mv2 = await mlflow_version(env, mid, 2)
    assert mv2.tags["tips.training_run"] == run_name and mv2.tags["tips.state"] == "CANDIDATE"
    assert mv2.tags["tips.artifact_uri"] == model_file.resolve().as_uri() == v2.artifact_uri
    trained_run = await asyncio.to_thread(env.mlflow.get_run, mv2.run_id)
    assert trained_run.info.status == "FINISHED"
    assert trained_run.data.params["alpha"] == "0.3"
    assert trained_run.data.metrics["decisions"] == 1800
    assert trained_run.data.metrics["progress"] == 1.0
    history = await asyncio.to_thread(env.mlflow.get_metric_history, mv2.run_id, "train_loss")
    assert sorted({m.step for m in history}) == list(range(200, 1801, 200))
    logged = await asyncio.to_thread(env.mlflow.list_artifacts, mv2.run_id, "model")
    assert {f.path for f in logged} == {"model/model.onnx", "model/policy.npz"}
    assert mv2.source.endswith("/model")

    async def completed() -> ml_events.TrainingRunCompleted | None:
        nc = await nats.connect(env.nats_url, connect_timeout=2, max_reconnect_attempts=1)
        try:
            msg = await nc.jetstream().get_last_msg(
                "TIPS_ML_PIPELINES", subject_of(ml_events.TrainingRunCompleted)
            )
        except Exception:
            return None
        finally:
            await nc.close()
        event = ml_events.TrainingRunCompleted.FromString(msg.data)
        return event if event.training_run == run_name else None

    event = await eventually(completed)
    assert event.state == training_run_pb2.TRAINING_RUN_STATE_SUCCEEDED
    assert event.model_version == trained.model_version

    # The trained policy is clearly better than the promoted bad one.
    better = await _evaluate(env, v2.name, start, end)
    assert better.baseline_version == v1.name, better
    assert better.verdict == model_pb2.EVALUATION_VERDICT_BETTER, better
    assert {r.estimator for r in better.results} == {
        model_pb2.ESTIMATOR_IPS, model_pb2.ESTIMATOR_SNIPS, model_pb2.ESTIMATOR_DR
    }  # fmt: skip
    assert all(r.lift > 0 for r in better.results)
    # :evaluate logged it in MLflow: on the version's tags and as a run of its own.
    mv2 = await mlflow_version(env, mid, 2)
    dr = next(r for r in better.results if r.estimator == model_pb2.ESTIMATOR_DR)
    assert mv2.tags["tips.eval.verdict"] == "EVALUATION_VERDICT_BETTER"
    assert mv2.tags["tips.eval.baseline"] == v1.name
    assert dr.lift_ci_lower > 0
    assert float(mv2.tags["tips.eval.dr.lift_ci_lower"]) == pytest.approx(dr.lift_ci_lower)
    eval_run = await asyncio.to_thread(env.mlflow.get_run, mv2.tags["tips.eval.run_id"])
    assert eval_run.data.params["baseline_version"] == v1.name
    assert eval_run.data.metrics["decision_count"] == 1200
    assert eval_run.data.metrics["dr.lift"] == pytest.approx(dr.lift)
    assert eval_run.data.metrics["dr.lift_ci_upper"] == pytest.approx(dr.lift_ci_upper)
    assert {"ips.estimated_reward", "snips.lift_ci_lower", "dr.ci_lower"} <= set(
        eval_run.data.metrics
    )
    # The gate: DR's lift lower bound is above 0.
    assert (await _promote(env, v2.name)).state == S.MODEL_VERSION_STATE_PROMOTED
    assert (await _get_version(env, v1.name)).state == S.MODEL_VERSION_STATE_ARCHIVED

    # v3: bad again -> WORSE -> refused unless forced with a reason.
    bad = inverted_policy_file(env, start)
    request = "it's v3"  # a caller's text: never part of an MLflow filter
    v3 = await register(bad, request_id=request)
    assert (await register(bad, request_id=request)).name == v3.name  # idempotent retry
    worse = await _evaluate(env, v3.name, start, end)
    assert worse.verdict == model_pb2.EVALUATION_VERDICT_WORSE, worse
    await _refused(env, v3.name, "EVALUATED_WORSE")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _promote(env, v3.name, force=True)
    assert "reason" in field_violations(err.value)
    forced = await _promote(env, v3.name, force=True, reason="rollback drill")
    assert forced.state == S.MODEL_VERSION_STATE_PROMOTED

    # v2's evaluation named v1 as its baseline; v3 serves now: stale.
    await _refused(env, v2.name, "STALE_BASELINE")
    assert (await _evaluate(env, v2.name, start, end)).verdict == (
        model_pb2.EVALUATION_VERDICT_BETTER
    )
    assert (await _promote(env, v2.name)).state == S.MODEL_VERSION_STATE_PROMOTED

    # v4: v2's files again, so no lift at all (the interval [0, 0] contains 0):
    # NOT_WORSE, and the gate refuses it, naming the lower bound.
    twin = env.repo / "incoming" / f"twin-{secrets.token_hex(3)}"
    twin.mkdir(parents=True)
    for name in ("model.onnx", "policy.npz"):
        shutil.copyfile(env.repo / mid / "2" / name, twin / name)
    v4 = await register(twin / "model.onnx")
    assert v4.name == f"models/{mid}/versions/4"
    tie = await _evaluate(env, v4.name, start, end)
    assert tie.verdict == model_pb2.EVALUATION_VERDICT_NOT_WORSE, tie
    tie_dr = next(r for r in tie.results if r.estimator == model_pb2.ESTIMATOR_DR)
    assert tie_dr.lift_ci_lower <= 0.0 <= tie_dr.lift_ci_upper
    await _refused(env, v4.name, "LIFT_LOWER_BOUND_NOT_ABOVE_ZERO")

    model = (await env.ml.GetModel(pb.GetModelRequest(name=f"models/{mid}"), metadata=ADMIN)).model
    assert model.promoted_version == v2.name
    listed = await env.ml.ListModelVersions(
        pb.ListModelVersionsRequest(parent=f"models/{mid}", page_size=2), metadata=ADMIN
    )
    assert [v.name.rsplit("/", 1)[1] for v in listed.model_versions] == ["4", "3"]
    rest = await env.ml.ListModelVersions(
        pb.ListModelVersionsRequest(
            parent=f"models/{mid}", page_size=2, page_token=listed.next_page_token
        ),
        metadata=ADMIN,
    )
    assert [v.name.rsplit("/", 1)[1] for v in rest.model_versions] == ["2", "1"]
    archived = await env.ml.ListModelVersions(
        pb.ListModelVersionsRequest(
            parent=f"models/{mid}", states=[S.MODEL_VERSION_STATE_ARCHIVED]
        ),
        metadata=ADMIN,
    )
    assert [v.name.rsplit("/", 1)[1] for v in archived.model_versions] == ["3", "1"]

    # MLflow is the registry: the champion alias is v2, every version's state shows.
    registered = await asyncio.to_thread(env.mlflow.get_registered_model, mid)
    assert registered.tags["tips.algorithm"] == bandit.ALGORITHM
    champion = await asyncio.to_thread(env.mlflow.get_model_version_by_alias, mid, "champion")
    assert champion.tags["tips.version"] == "2"
    states = {n: (await mlflow_version(env, mid, n)).tags["tips.state"] for n in (1, 2, 3, 4)}
    assert states == {1: "ARCHIVED", 2: "PROMOTED", 3: "ARCHIVED", 4: "CANDIDATE"}

    # A version whose directory was pruned from the repository (the recommender's
    # exports keep three) is restored from its MLflow run when promoted: a forced
    # rollback to v1.
    shutil.rmtree(env.repo / mid / "1")
    rolled = await _promote(env, v1.name, force=True, reason="rollback to v1")
    assert rolled.state == S.MODEL_VERSION_STATE_PROMOTED
    assert (env.repo / mid / "1" / "model.onnx").is_file()
    promoted = await env.db.fetch(
        "SELECT payload FROM ml_pipelines.outbox WHERE subject = $1",
        subject_of(ml_events.ModelVersionPromoted),
    )
    events = [ml_events.ModelVersionPromoted.FromString(r["payload"]) for r in promoted]
    mine = [e for e in events if e.model == f"models/{mid}"]
    assert [e.model_version.rsplit("/", 1)[1] for e in mine] == ["1", "2", "3", "2", "1"]
    assert [e.forced for e in mine] == [False, False, True, False, True]
    # What the recommender loads: a file:// URI of model.onnx, policy.npz beside it.
    for e in mine:
        path = promoted_file(e)
        assert path.parent == (env.repo / mid / e.model_version.rsplit("/", 1)[1]).resolve()
    assert (promoted_file(mine[1]).parent / "policy.npz").is_file()  # trained: v2

    # Cancel: a second run waits for the first's slot and is cancelled before it trains.
    runs = []
    for _ in range(2):
        r = await env.ml.CreateTrainingRun(
            pb.CreateTrainingRunRequest(training_run=run), metadata=ADMIN
        )
        runs.append(r.training_run.name)
    cancelled = await env.ml.CancelTrainingRun(
        pb.CancelTrainingRunRequest(name=runs[1]), metadata=ADMIN
    )
    assert cancelled.training_run.state in (
        training_run_pb2.TRAINING_RUN_STATE_CANCELLING,
        training_run_pb2.TRAINING_RUN_STATE_CANCELLED,
    )

    async def stopped() -> bool:
        got = await env.ml.GetTrainingRun(pb.GetTrainingRunRequest(name=runs[1]), metadata=ADMIN)
        return got.training_run.state == training_run_pb2.TRAINING_RUN_STATE_CANCELLED

    await eventually(stopped, 120)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.ml.CancelTrainingRun(pb.CancelTrainingRunRequest(name=runs[1]), metadata=ADMIN)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await eventually(lambda: _succeeded(env, runs[0]), 120)  # the other run is unaffected


async def _succeeded(env: Env, name: str) -> bool:
    got = await env.ml.GetTrainingRun(pb.GetTrainingRunRequest(name=name), metadata=ADMIN)
    return got.training_run.state == training_run_pb2.TRAINING_RUN_STATE_SUCCEEDED


async def test_export_registers_a_candidate(env: Env) -> None:
    mid = f"ex_{secrets.token_hex(3)}"
    # Two earlier exports nobody announced: this one's directory is 3.
    for _ in range(3):
        version = onnx_export.export(bandit.Policy(), env.repo, mid)
    assert version == "3"
    path = env.repo / mid / version / "model.onnx"
    event = rec_events.PolicyModelExported(
        event_id=f"export:{mid}", occur_time=ts(datetime.now(UTC)),
        model_version=f"models/{mid}/versions/{version}", artifact_uri=path.as_uri(),
        online_update_count=12, policy_name=bandit.ALGORITHM,
        feature_schema_version=f"features-v1-d{features.DIM}",
    )  # fmt: skip
    await env.bus.publish(event, msg_id=event.event_id)

    async def registered() -> model_pb2.ModelVersion | None:
        try:
            return await _get_version(env, event.model_version)
        except grpc.aio.AioRpcError:
            return None

    got = await eventually(registered)
    assert got.state == S.MODEL_VERSION_STATE_CANDIDATE
    assert got.metrics["online_update_count"] == 12
    # The export keeps its directory number; MLflow numbers it 1 and tags it 3.
    mv = await mlflow_version(env, mid, 3)
    assert mv.version == 1 and mv.tags["tips.state"] == "CANDIDATE"
    assert mv.tags["tips.artifact_uri"] == path.resolve().as_uri() == got.artifact_uri
    logged = await asyncio.to_thread(env.mlflow.list_artifacts, mv.run_id, "model")
    # The export's directory as it is (model.onnx, and policy.npz where written).
    assert {f.path for f in logged} == {f"model/{f.name}" for f in path.parent.iterdir()}
    assert "model/model.onnx" in {f.path for f in logged}
    # The same export again (another message): nothing more is registered. A
    # marker export of another model, consumed after it, says when it was seen.
    await env.bus.publish(event, msg_id=event.event_id + ":again")
    marker_model = f"ex_{secrets.token_hex(3)}"
    marker_version = onnx_export.export(bandit.Policy(), env.repo, marker_model)
    marker = rec_events.PolicyModelExported(
        event_id=f"export:{marker_model}", occur_time=ts(datetime.now(UTC)),
        model_version=f"models/{marker_model}/versions/{marker_version}",
        artifact_uri=(env.repo / marker_model / marker_version / "model.onnx").as_uri(),
        policy_name=bandit.ALGORITHM, feature_schema_version=f"features-v1-d{features.DIM}",
    )  # fmt: skip
    await env.bus.publish(marker, msg_id=marker.event_id)
    await eventually(lambda: _exists(env, marker.model_version))
    versions = await asyncio.to_thread(env.mlflow.search_model_versions, f"name = '{mid}'")
    assert [v.version for v in versions] == [1]
    model = (await env.ml.GetModel(pb.GetModelRequest(name=f"models/{mid}"), metadata=ADMIN)).model
    assert model.algorithm == bandit.ALGORITHM and not model.promoted_version


async def test_only_the_newest_idle_exports_stay_in_the_registry(env: Env) -> None:
    """Exports arrive every few hundred rewards: the registry keeps the newest two
    (the test's setting) of those nobody evaluated or promoted, and any promoted."""
    mid = f"ex_{secrets.token_hex(3)}"

    async def export_and_register(number: int) -> str:
        version = onnx_export.export(bandit.Policy(), env.repo, mid, keep=10)
        assert version == str(number)
        event = rec_events.PolicyModelExported(
            event_id=f"export:{mid}:{version}", occur_time=ts(datetime.now(UTC)),
            model_version=f"models/{mid}/versions/{version}",
            artifact_uri=(env.repo / mid / version / "model.onnx").as_uri(),
            policy_name=bandit.ALGORITHM, feature_schema_version=features.SCHEMA_VERSION,
        )  # fmt: skip
        await env.bus.publish(event, msg_id=event.event_id)
        await eventually(lambda: _exists(env, event.model_version))
        return event.model_version

    first = await export_and_register(1)
    await _promote(env, first, force=True, reason="serve the first export")
    for number in range(2, 6):
        await export_and_register(number)

    async def kept() -> list[int]:  # pruned right after the newest is registered
        found = await asyncio.to_thread(env.mlflow.search_model_versions, f"name = '{mid}'")
        # A version MLflow is writing may not have its tags yet: counted once it has.
        return sorted(int(v.tags["tips.version"]) for v in found if "tips.version" in v.tags)

    await wait_for(kept, lambda versions: versions == [1, 4, 5])
    assert not await _exists(env, f"models/{mid}/versions/2")


async def _exists(env: Env, name: str) -> bool:
    try:
        await _get_version(env, name)
    except grpc.aio.AioRpcError:
        return False
    return True


async def test_feature_backfill_with_the_events_service(env: Env) -> None:
    users = [f"u_{secrets.token_hex(4)}" for _ in range(2)]
    now = datetime.now(UTC).replace(microsecond=0)
    base = now - timedelta(hours=3)
    if (base + timedelta(hours=1)).date() != base.date():
        # Features are per UTC day: keep the hour of signals on one side of midnight.
        base -= timedelta(hours=2)

    def signal(kind: int, at: datetime, minutes: int = 1, **payload: Any) -> signal_pb2.Signal:
        return signal_pb2.Signal(
            client_signal_id=secrets.token_hex(8), kind=kind,  # type: ignore[arg-type]
            source=signal_pb2.SIGNAL_SOURCE_PHONE, start_time=ts(at),
            end_time=ts(at + timedelta(minutes=minutes)), **payload,
        )  # fmt: skip

    K = signal_pb2
    for n, user in enumerate(users):
        signals = [
            signal(K.SIGNAL_KIND_STEPS, base, steps=K.StepsPayload(count=1000 + n)),
            signal(
                K.SIGNAL_KIND_STEPS, base + timedelta(minutes=5), steps=K.StepsPayload(count=500)
            ),
            signal(K.SIGNAL_KIND_MOOD, base, mood=K.MoodPayload(score=4)),
            signal(
                K.SIGNAL_KIND_CALENDAR_EVENT,
                base + timedelta(minutes=10),
                minutes=45,
                calendar_event=K.CalendarEventPayload(event_id="e1", busy=True),
            ),
        ]
        response = await env.events.BatchIngestSignals(
            ev.BatchIngestSignalsRequest(parent=f"users/{user}", signals=signals),
            metadata=as_user(user),
        )
        assert all(r.outcome == ev.INGEST_OUTCOME_ACCEPTED for r in response.results), response
    created = await env.ml.CreateFeatureBackfill(
        pb.CreateFeatureBackfillRequest(
            feature_backfill=feature_backfill_pb2.FeatureBackfill(
                feature_schema_version="daily-v1",
                users=[f"users/{u}" for u in users],
                time_window=window(now - timedelta(days=1), now),
            )
        ),
        metadata=ADMIN,
    )
    name = created.feature_backfill.name

    async def done() -> feature_backfill_pb2.FeatureBackfill | None:
        got = await env.ml.GetFeatureBackfill(
            pb.GetFeatureBackfillRequest(name=name), metadata=ADMIN
        )
        b = got.feature_backfill
        assert b.state != feature_backfill_pb2.FEATURE_BACKFILL_STATE_FAILED, b.error
        return b if b.state == feature_backfill_pb2.FEATURE_BACKFILL_STATE_SUCCEEDED else None

    finished = await eventually(done, 60)
    assert finished.progress_fraction == 1.0
    assert finished.processed_user_count == 2
    assert finished.written_row_count == 2
    rows = await env.db.fetch(
        "SELECT user_id, features FROM ml_pipelines.user_daily_features"
        " WHERE user_id = ANY($1) AND feature_schema_version = 'daily-v1' ORDER BY user_id",
        users,
    )
    by_user = {r["user_id"]: json.loads(r["features"]) for r in rows}
    for n, user in enumerate(users):
        f = by_user[user]
        assert f["steps_total"] == 1500 + n
        assert f["mood_mean"] == 4
        assert f["busy_minutes"] == 45 and f["meeting_count"] == 1
        assert f["signal_count"] == 4
    listed = await env.ml.ListFeatureBackfills(pb.ListFeatureBackfillsRequest(), metadata=ADMIN)
    assert name in [b.name for b in listed.feature_backfills]

"""The events service's API beyond the thin path: size limits, connector ingest,
purge, replay with resume tokens, backpressure answers, erasure on UserDeleted,
and the stream's retention from settings. Real PostgreSQL and NATS (its own)."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
import nats
import pytest

from kernel.bus import Bus, streams_for
from kernel.clients import close_channels
from kernel.db import Database
from kernel.errors import ResourceExhausted, field_violations
from kernel.migrations import migrate
from kernel.server import ServiceServer
from services.events import domain
from services.events.backpressure import Ingress
from services.events.service import SERVICE as EVENTS
from services.events.settings import EventsSettings
from services.events.store import NewSignal
from tests.integration.events.events_helpers import (
    events_server,
    md,
    steps,
    ts,
    user,
)
from tests.support.waiting import eventually, stream_msg_ids
from tips.events.v1 import events_service_pb2 as ev
from tips.events.v1 import events_service_pb2_grpc as ev_grpc
from tips.events.v1 import signal_pb2
from tips.profile.v1 import events_pb2 as profile_events
from tipsmesh.localinfra import LocalNats

pytestmark = pytest.mark.integration


@dataclass
class Env:
    events: ev_grpc.EventsServiceStub
    internal: ev_grpc.EventsInternalServiceStub
    db: asyncpg.Connection
    server: ServiceServer
    settings: EventsSettings


@pytest.fixture(scope="module")
async def env(
    create_database: Callable[[], Awaitable[str]], db_role_prefix: str, db_role_password: str
) -> AsyncIterator[Env]:
    store = Path(tempfile.mkdtemp(prefix="tips-nats-evapi-"))
    local = LocalNats(store)
    nats_url = await asyncio.to_thread(local.start)
    db_url = await create_database()
    settings = EventsSettings(
        events_consent_gate=False,  # no profile service: gate tested in test_events_consent.py
        database_url=db_url, nats_url=nats_url, db_role_prefix=db_role_prefix,
        db_role_password=db_role_password,
        log_format="text", events_stream_max_age_seconds=3600,
        events_stream_max_bytes=64 << 20, events_max_signal_bytes=1024,
    )  # fmt: skip
    await migrate(settings, [EVENTS])
    db = await asyncpg.connect(db_url)
    try:
        async with (
            events_server(settings) as server,
            grpc.aio.insecure_channel(server.address) as channel,
        ):
            yield Env(
                ev_grpc.EventsServiceStub(channel),
                ev_grpc.EventsInternalServiceStub(channel),
                db, server, settings,
            )  # fmt: skip
    finally:
        await close_channels()
        await db.close()
        await asyncio.to_thread(local.stop)
        shutil.rmtree(store, ignore_errors=True)


async def _ingest(
    env: Env, user_id: str, *signals: signal_pb2.Signal
) -> ev.BatchIngestSignalsResponse:
    request = ev.BatchIngestSignalsRequest(parent=f"users/{user_id}", signals=signals)
    response: ev.BatchIngestSignalsResponse = await env.events.BatchIngestSignals(
        request, metadata=md(user_id), timeout=10
    )
    return response


def _connector(user_id: str, client_id: str, connection: str = "c1") -> signal_pb2.Signal:
    signal = steps(100, client_id)
    signal.source = signal_pb2.SIGNAL_SOURCE_CONNECTOR
    signal.connection = f"users/{user_id}/connections/{connection}"
    return signal


async def test_stream_retention_comes_from_settings(env: Env) -> None:
    nc = await nats.connect(env.settings.nats_url)
    try:
        info = await nc.jetstream().stream_info("TIPS_EVENTS")
    finally:
        await nc.close()
    assert info.config.max_age == 3600
    assert info.config.max_bytes == 64 << 20
    assert info.config.duplicate_window == env.settings.events_stream_duplicate_window_seconds


async def test_oversized_item_is_rejected_and_the_rest_accepted(env: Env) -> None:
    user_id = user()
    workout = signal_pb2.Signal(
        client_signal_id="w1", kind=signal_pb2.SIGNAL_KIND_WORKOUT,
        source=signal_pb2.SIGNAL_SOURCE_PHONE, start_time=ts(datetime.now(UTC)),
        workout=signal_pb2.WorkoutPayload(activity="a" * 2000),
    )  # fmt: skip
    too_old = steps(5, at=datetime.now(UTC) - timedelta(days=3 * 365))
    response = await _ingest(env, user_id, steps(1), workout, too_old)
    outcomes = [r.outcome for r in response.results]
    assert outcomes == [
        ev.INGEST_OUTCOME_ACCEPTED, ev.INGEST_OUTCOME_REJECTED, ev.INGEST_OUTCOME_REJECTED,
    ]  # fmt: skip
    assert "bytes" in response.results[1].error.message
    assert "start_time" in response.results[2].error.message
    assert response.accepted_count == 1 and response.rejected_count == 2


async def test_connector_batch_spans_users_with_per_item_errors(env: Env) -> None:
    alice, bob = user(), user()
    items = [
        ev.ConnectorSignal(parent=f"users/{alice}", signal=_connector(alice, "a1")),
        ev.ConnectorSignal(parent=f"users/{bob}", signal=_connector(bob, "b1")),
        # Phone source through the connector door: refused, naming the field.
        ev.ConnectorSignal(parent=f"users/{bob}", signal=steps(3, "b2")),
        # Another user's connection.
        ev.ConnectorSignal(parent=f"users/{bob}", signal=_connector(alice, "b3")),
        ev.ConnectorSignal(parent="nope", signal=_connector(alice, "x")),
        ev.ConnectorSignal(parent=f"users/{alice}", signal=_connector(alice, "a1")),
    ]
    response = await env.internal.BatchIngestConnectorSignals(
        ev.BatchIngestConnectorSignalsRequest(signals=items, sync_id="s1"), timeout=10
    )
    outcomes = [r.outcome for r in response.results]
    assert outcomes == [
        ev.INGEST_OUTCOME_ACCEPTED, ev.INGEST_OUTCOME_ACCEPTED, ev.INGEST_OUTCOME_REJECTED,
        ev.INGEST_OUTCOME_REJECTED, ev.INGEST_OUTCOME_REJECTED, ev.INGEST_OUTCOME_DUPLICATE,
    ]  # fmt: skip
    assert "signal.source" in response.results[2].error.message
    assert "signal.connection" in response.results[3].error.message
    assert "parent" in response.results[4].error.message
    assert response.results[5].signal == response.results[0].signal
    assert response.results[1].signal.startswith(f"users/{bob}/signals/")
    assert (response.accepted_count, response.duplicate_count, response.rejected_count) == (2, 1, 3)


async def test_purge_by_connection_counts_first_then_deletes_and_publishes(env: Env) -> None:
    user_id = user()
    await _ingest(env, user_id, steps(1, "p1"), steps(2, "p2"))
    await env.internal.BatchIngestConnectorSignals(
        ev.BatchIngestConnectorSignalsRequest(
            signals=[
                ev.ConnectorSignal(parent=f"users/{user_id}", signal=_connector(user_id, f"k{i}"))
                for i in range(3)
            ]
        ),
        timeout=10,
    )
    request = ev.PurgeSignalsRequest(
        parent=f"users/{user_id}", connection=f"users/{user_id}/connections/c1",
        reason=ev.PURGE_REASON_CONSENT_REVOKED, validate_only=True,
    )  # fmt: skip
    dry = await env.events.PurgeSignals(request, metadata=md(user_id), timeout=10)
    assert dry.purge_count == 3 and not dry.HasField("purge_time")
    sql = "SELECT count(*) FROM events.signals WHERE user_id = $1"
    assert await env.db.fetchval(sql, user_id) == 5
    request.validate_only = False
    done = await env.events.PurgeSignals(request, metadata=md(user_id), timeout=10)
    assert done.purge_count == 3 and done.HasField("purge_time")
    assert await env.db.fetchval(sql, user_id) == 2
    ids = await eventually(
        lambda: stream_msg_ids(
            env.settings.nats_url, "TIPS_EVENTS", "tips.events.v1.signals_purged"
        ),
        lambda found: any(i.startswith(f"users/{user_id}/purges/") for i in found),
    )
    assert sum(i.startswith(f"users/{user_id}/purges/") for i in ids) == 1


async def test_purge_selector_is_validated(env: Env) -> None:
    user_id = user()
    for request, field in (
        (ev.PurgeSignalsRequest(parent=f"users/{user_id}"), "all_signals"),
        (
            ev.PurgeSignalsRequest(parent=f"users/{user_id}", all_signals=True, kinds=[1]),
            "all_signals",
        ),
        (ev.PurgeSignalsRequest(parent=f"users/{user_id}", connection="users/x/connections/y"),
         "connection"),
    ):  # fmt: skip
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await env.events.PurgeSignals(request, metadata=md(user_id), timeout=10)
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in field_violations(failed.value)
    other = ev.PurgeSignalsRequest(parent=f"users/{user()}", all_signals=True)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await env.events.PurgeSignals(other, metadata=md(user_id), timeout=10)
    assert failed.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_replay_streams_chunks_in_time_order_and_resumes(env: Env) -> None:
    user_id = user()
    base = datetime.now(UTC) - timedelta(hours=10)
    await _ingest(
        env, user_id, *[steps(i, f"r{i}", at=base + timedelta(minutes=i)) for i in range(25)]
    )
    window = ev.ReplaySignalsRequest(parent=f"users/{user_id}", chunk_size=10)
    window.time_range.start_time.CopyFrom(ts(base - timedelta(hours=1)))
    chunks = [c async for c in env.events.ReplaySignals(window, metadata=md(user_id), timeout=10)]
    assert [len(c.signals) for c in chunks] == [10, 10, 5]
    counts = [s.steps.count for c in chunks for s in c.signals]
    assert counts == list(range(25))
    resumed = ev.ReplaySignalsRequest()
    resumed.CopyFrom(window)
    resumed.resume_token = chunks[0].resume_token
    rest = [c async for c in env.events.ReplaySignals(resumed, metadata=md(user_id), timeout=10)]
    assert [s.steps.count for c in rest for s in c.signals] == list(range(10, 25))
    # A token is refused with other filters; start_time is required.
    resumed.kinds.append(signal_pb2.SIGNAL_KIND_SLEEP)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        async for _ in env.events.ReplaySignals(resumed, metadata=md(user_id), timeout=10):
            pass
    assert "resume_token" in field_violations(failed.value)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        async for _ in env.events.ReplaySignals(
            ev.ReplaySignalsRequest(parent=f"users/{user_id}"), metadata=md(user_id), timeout=10
        ):
            pass
    assert "time_range.start_time" in field_violations(failed.value)


async def test_replay_all_filters_users(env: Env) -> None:
    alice, bob = user(), user()
    at = datetime.now(UTC) - timedelta(hours=2)
    await _ingest(env, alice, steps(1, "x", at=at))
    await _ingest(env, bob, steps(2, "x", at=at))
    request = ev.ReplayAllSignalsRequest(users=[f"users/{alice}", f"users/{bob}"], chunk_size=1)
    request.time_range.start_time.CopyFrom(ts(at - timedelta(minutes=5)))
    chunks = [c async for c in env.internal.ReplayAllSignals(request, timeout=10)]
    names = [s.name for c in chunks for s in c.signals]
    assert len(names) == 2 and all(c.resume_token for c in chunks)
    assert {n.split("/")[1] for n in names} == {alice, bob}


async def test_erasure_deletes_the_users_signals_and_unpublished_events(env: Env) -> None:
    victim, bystander = user(), user()
    await _ingest(env, victim, steps(1, "e1"), steps(2, "e2"))
    await _ingest(env, bystander, steps(3, "e1"))
    # An unpublished SignalRecorded of the victim must not leak after the erasure.
    await env.db.execute(
        "INSERT INTO events.outbox (msg_id, subject, message_type, payload, headers)"
        " VALUES ($1, 'tips.events.v1.signal_recorded', 'x', '', '{}')",
        f"users/{victim}/signals/pending",
    )
    bus = await Bus.connect(env.settings, "test-profile")
    try:
        await bus.ensure_streams(streams_for(profile_events.UserDeleted))
        event = profile_events.UserDeleted(
            event_id=f"del-{secrets.token_hex(4)}", user=f"users/{victim}",
            erasure=f"users/{victim}/erasure",
        )  # fmt: skip
        await bus.publish(event, msg_id=event.event_id)
        await bus.publish(event, msg_id=event.event_id + "-again")  # a redelivery in effect
    finally:
        await bus.close()
    sql = "SELECT count(*) FROM events.signals WHERE user_id = $1"
    await eventually(lambda: env.db.fetchval(sql, victim), lambda n: n == 0, within=40)
    assert await env.db.fetchval(sql, bystander) == 1
    left = await env.db.fetchval(
        "SELECT count(*) FROM events.outbox WHERE starts_with(msg_id, $1)"
        " AND NOT starts_with(msg_id, $2)",
        f"users/{victim}/", f"users/{victim}/purges/",
    )  # fmt: skip
    assert left == 0


async def test_ingress_refuses_with_retry_hints_and_recovers(env: Env) -> None:
    """The admission rules, on the real store (the gRPC mapping is in the outage tests)."""
    settings = env.settings.model_copy(
        update={
            "events_outbox_max_backlog": 100,
            "events_ingest_max_in_flight": 1,
            "events_ingest_queue_timeout_seconds": 0.05,
        }
    )
    db = await Database.connect(settings, "events")
    try:
        ingress = Ingress(db, settings)
        user_id = user()
        stored = domain.stored_signal(steps(1, "bp1"), user_id, "bp1", datetime.now(UTC))
        item = NewSignal(user_id, "bp1", stored)
        ingress.backlog = 100  # as measured while NATS is down
        with pytest.raises(ResourceExhausted) as refused:
            await ingress.store([item])
        assert refused.value.reason == "OUTBOX_BACKLOG"
        assert refused.value.retry_after == timedelta(seconds=settings.events_retry_after_seconds)
        await ingress.measure()  # the relay drained: the next measure lets ingest in
        assert ingress.backlog < 100
        async with ingress._slot():  # another call holds the only slot
            with pytest.raises(ResourceExhausted) as busy:
                await ingress.store([item])
            assert busy.value.reason == "INGEST_CONCURRENCY"
        # The same client id twice in one batch: stored once, the second is a DUPLICATE.
        again = NewSignal(
            user_id, "bp2", domain.stored_signal(steps(1, "bp1"), user_id, "bp2", datetime.now(UTC))
        )
        results = await ingress.store([item, again])
        assert [(r.signal_id, r.created) for r in results] == [("bp1", True), ("bp1", False)]
    finally:
        await db.close()

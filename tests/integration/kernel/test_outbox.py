"""kernel.outbox: stored and published, nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, Table, func, select

from kernel.bus import Bus, StreamSpec
from kernel.db import Database
from kernel.migrations import migrate
from kernel.outbox import (
    OutboxRelay,
    OutboxRow,
    claim,
    enqueue,
    enqueue_rows,
    outbox_table,
    processed_table,
)
from kernel.service import ServiceDefinition
from kernel.settings import Settings
from tests.support.waiting import eventually, stream_messages
from tipsmesh.localinfra import LocalNats

pytestmark = pytest.mark.integration


async def _no_build(runtime: object) -> list[object]:
    return []


class Env:
    """A service schema with outbox and processed tables, and its stream."""

    def __init__(self, db: Database, outbox: Table, processed: Table, stream: str, prefix: str):
        self.db, self.outbox, self.processed = db, outbox, processed
        self.stream, self.prefix = stream, prefix


async def _service_db(settings: Settings, bus_ns: str) -> tuple[Database, Table, Table]:
    service = f"obx{bus_ns}"
    await migrate(settings, [ServiceDefinition(name=service, build=_no_build)])  # type: ignore[arg-type]
    db = await Database.connect(settings, service)
    metadata = MetaData(schema=service)
    outbox, processed = outbox_table(metadata), processed_table(metadata)
    async with db.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    return db, outbox, processed


@pytest.fixture
async def env(settings: Settings, bus_ns: str, cleanup_streams: list[str]) -> AsyncIterator[Env]:
    db, outbox, processed = await _service_db(settings, bus_ns)
    stream, prefix = f"OBX{bus_ns}", f"obx{bus_ns}"
    bus = await Bus.connect(settings, "setup")
    await bus.ensure_streams([StreamSpec(stream, (f"{prefix}.>",), memory=True)])
    cleanup_streams.append(stream)
    await bus.close()
    yield Env(db, outbox, processed, stream, prefix)
    await db.close()


async def _pending(env: Env) -> int:
    async with env.db.session() as session:
        query = select(func.count()).where(env.outbox.c.published_at.is_(None))
        return int((await session.execute(query)).scalar_one())


async def test_committed_event_is_published_once(
    env: Env, settings: Settings, nats_url: str, test_events: dict[str, Any]
) -> None:
    thing = test_events["ThingHappened"]
    subject = f"{env.prefix}.thing"
    async with env.db.transaction() as session:
        assert await enqueue(session, env.outbox, thing(event_id="c1", count=7), msg_id="c1",
                             subject=subject)  # fmt: skip
        # Enqueueing the same id again (a retried request) is a no-op.
        assert not await enqueue(session, env.outbox, thing(event_id="c1"), msg_id="c1",
                                 subject=subject)  # fmt: skip
    bus = await Bus.connect(settings, "relay")
    try:
        relay = OutboxRelay(env.db, bus, env.outbox)
        assert await relay.drain_once() == 1
        assert await relay.drain_once() == 0
        await relay.close()
    finally:
        await bus.close()
    msgs = await stream_messages(nats_url, env.stream, subject)
    assert len(msgs) == 1
    assert thing.FromString(msgs[0].data).count == 7
    assert msgs[0].headers["Nats-Msg-Id"] == "c1"
    assert msgs[0].headers["Content-Type"].endswith("proto=tipstest.kernel.v1.ThingHappened")
    assert await _pending(env) == 0


async def test_bulk_rows_are_one_writer_with_the_single_path(
    env: Env, settings: Settings, nats_url: str, test_events: dict[str, Any]
) -> None:
    thing = test_events["ThingHappened"]
    subject = f"{env.prefix}.thing"
    rows = [
        OutboxRow(
            f"b{i}", subject, thing.DESCRIPTOR.full_name,
            thing(event_id=f"b{i}", count=i).SerializeToString(),
            json.dumps({"Nats-Msg-Id": f"b{i}", "Content-Type": "application/protobuf"}),
        )
        for i in range(3)
    ]  # fmt: skip
    async with env.db.transaction() as session:
        assert await enqueue(session, env.outbox, thing(event_id="b1"), msg_id="b1",
                             subject=subject)  # fmt: skip
        # b1 is in already (a retried request): only the other two go in.
        assert await enqueue_rows(session, env.outbox, rows) == 2
        assert await enqueue_rows(session, env.outbox, rows) == 0
        assert await enqueue_rows(session, env.outbox, []) == 0
    bus = await Bus.connect(settings, "relay")
    try:
        relay = OutboxRelay(env.db, bus, env.outbox)
        assert await relay.drain_once() == 3
        await relay.close()
    finally:
        await bus.close()
    msgs = await stream_messages(nats_url, env.stream, subject)
    assert [m.headers["Nats-Msg-Id"] for m in msgs] == ["b1", "b0", "b2"]
    assert [thing.FromString(m.data).count for m in msgs] == [0, 0, 2]


async def test_rolled_back_event_is_never_published(
    env: Env, settings: Settings, nats_url: str, test_events: dict[str, Any]
) -> None:
    subject = f"{env.prefix}.thing"
    with pytest.raises(RuntimeError, match="handler failed"):
        async with env.db.transaction() as session:
            await enqueue(session, env.outbox, test_events["ThingHappened"](), msg_id="r1",
                          subject=subject)  # fmt: skip
            raise RuntimeError("handler failed")
    bus = await Bus.connect(settings, "relay")
    try:
        assert await OutboxRelay(env.db, bus, env.outbox).drain_once() == 0
    finally:
        await bus.close()
    assert await stream_messages(nats_url, env.stream, subject) == []
    async with env.db.session() as session:
        assert (await session.execute(select(func.count()).select_from(env.outbox))).scalar() == 0


async def test_relay_wakes_on_notify(
    env: Env, settings: Settings, nats_url: str, test_events: dict[str, Any]
) -> None:
    subject = f"{env.prefix}.thing"
    bus = await Bus.connect(settings, "relay")
    # A long poll interval: only NOTIFY can make this fast.
    relay = OutboxRelay(env.db, bus, env.outbox, poll_interval=30)
    task = asyncio.create_task(relay.run())
    try:
        async with asyncio.timeout(30):
            await relay.listening.wait()
        async with env.db.transaction() as session:
            for i in range(3):
                await enqueue(session, env.outbox, test_events["ThingHappened"](count=i),
                              msg_id=f"n{i}", subject=subject)  # fmt: skip
        # Well within the 30 s poll interval: the NOTIFY woke the relay.
        await eventually(lambda: _pending(env), lambda n: n == 0, within=20)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await bus.close()
    msgs = await stream_messages(nats_url, env.stream, subject)
    assert [m.headers["Nats-Msg-Id"] for m in msgs] == ["n0", "n1", "n2"]


async def test_relay_holds_its_connection_while_busy_and_survives_losing_it(
    env: Env, settings: Settings, nats_url: str, test_events: dict[str, Any]
) -> None:
    """Rounds with rows keep one connection (no pool checkout and pre-ping per
    round); a held connection the server killed costs one failed round, then a
    fresh one publishes everything; an idle relay gives its connection back."""
    subject = f"{env.prefix}.thing"
    thing = test_events["ThingHappened"]

    async def add(msg_id: str) -> None:
        async with env.db.transaction() as session:
            await enqueue(session, env.outbox, thing(), msg_id=msg_id, subject=subject)

    bus = await Bus.connect(settings, "relay")
    relay = OutboxRelay(env.db, bus, env.outbox, poll_interval=0.2, max_backoff=0.2)
    try:
        await add("h0")
        assert await relay.drain_once() == 1
        async with relay._conn.use() as conn:  # the connection the round used, still held
            first = conn.get_server_pid()
        await add("h1")
        assert await relay.drain_once() == 1
        async with relay._conn.use() as conn:
            assert conn.get_server_pid() == first
        # The server ends that session (a restart, an admin): the held one is dead.
        async with env.db.driver() as admin:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", first)
        await add("h2")
        task = asyncio.create_task(relay.run())
        try:
            await eventually(lambda: _pending(env), lambda n: n == 0, within=30)
            # Drained, then idle: the connection went back to the pool.
            await eventually(_async(lambda: relay._conn.held), lambda held: not held, within=30)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await relay.close()
        await bus.close()
    msgs = await stream_messages(nats_url, env.stream, subject)
    assert [m.headers["Nats-Msg-Id"] for m in msgs] == ["h0", "h1", "h2"]


def _async(read: Any) -> Any:
    async def value() -> Any:
        return read()

    return value


async def test_relay_stops_when_cancelled_as_it_is_woken(env: Env, settings: Settings) -> None:
    """A stop that lands as a NOTIFY wakes the relay still stops it (asyncio.wait_for
    swallowed that cancellation on 3.11, and a recommender's shutdown hung forever)."""
    bus = await Bus.connect(settings, "relay")
    relay = OutboxRelay(env.db, bus, env.outbox, poll_interval=30)
    task = asyncio.create_task(relay.run())
    try:
        # Idle: drained, waiting for a wake-up (the event has a waiter).
        await eventually(lambda: _waiting(relay), lambda waiting: waiting, within=30)
        relay._wake.set()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(10):
                await task
    finally:
        task.cancel()
        await bus.close()


async def _waiting(relay: OutboxRelay) -> bool:
    return bool(relay._wake._waiters)  # type: ignore[attr-defined]


@pytest.fixture
def own_nats() -> Iterator[LocalNats]:
    """A NATS of this test alone: it gets stopped and restarted."""
    store = Path(tempfile.mkdtemp(prefix="tips-nats-outage-"))
    server = LocalNats(store)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(store, ignore_errors=True)


async def test_events_survive_a_nats_outage_exactly_once(
    settings: Settings, bus_ns: str, own_nats: LocalNats, test_events: dict[str, Any]
) -> None:
    mine = settings.model_copy(update={"nats_url": own_nats.url})
    db, outbox, _ = await _service_db(settings, bus_ns)
    stream, subject = "OUTAGE", "outage.thing"
    bus = await Bus.connect(mine, "relay")
    # File storage: the stream survives the server restart.
    await bus.ensure_streams([StreamSpec(stream, ("outage.>",))])
    # A short ack timeout: publishes fail (and are retried) during the outage.
    relay = OutboxRelay(db, bus, outbox, poll_interval=0.2, max_backoff=0.3, publish_timeout=0.3)
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.to_thread(own_nats.stop)
        async with db.transaction() as session:
            for i in range(5):
                await enqueue(session, outbox, test_events["ThingHappened"](count=i),
                              msg_id=f"o{i}", subject=subject)  # fmt: skip
        await asyncio.sleep(1.5)  # the relay keeps failing and retrying meanwhile
        env = Env(db, outbox, outbox, stream, "")
        assert await _pending(env) == 5
        await asyncio.to_thread(own_nats.start)
        await eventually(lambda: _pending(env), lambda n: n == 0, within=30)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await bus.close()
        await db.close()
    msgs = await stream_messages(own_nats.url, stream, subject)
    assert [m.headers["Nats-Msg-Id"] for m in msgs] == [f"o{i}" for i in range(5)]


async def test_claim_recognises_redeliveries(env: Env) -> None:
    async with env.db.transaction() as session:
        assert await claim(session, env.processed, consumer="c", msg_id="m1")
        assert not await claim(session, env.processed, consumer="c", msg_id="m1")
        assert await claim(session, env.processed, consumer="other", msg_id="m1")
    with pytest.raises(RuntimeError):
        async with env.db.transaction() as session:
            assert await claim(session, env.processed, consumer="c", msg_id="m2")
            raise RuntimeError("handler failed: the claim rolls back with it")
    async with env.db.transaction() as session:
        assert await claim(session, env.processed, consumer="c", msg_id="m2")

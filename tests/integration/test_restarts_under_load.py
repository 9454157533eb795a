"""PostgreSQL and NATS restarted mid-load: nothing lost, nothing twice, no 5xx.

The events service runs in process on its own PostgreSQL and its own NATS
(free ports, so the test can stop and start them; the session's servers are
never touched). Phones keep sending BatchIngestSignals, each batch with
fresh client ids; a batch answered UNAVAILABLE is sent again, the same
batch, after its RetryInfo delay, as a real client does. While the load
runs, PostgreSQL is stopped for a few seconds and started, then NATS.

Then: every batch was settled; every signal is stored exactly once, every
stored signal is on the stream exactly once; no answer but UNAVAILABLE was
ever an error; and gRPC health was seen NOT_SERVING while each server was
down, SERVING before and after. Counts are printed (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kernel.clients import close_channels
from kernel.migrations import migrate
from services.events.service import SERVICE as EVENTS
from services.events.settings import EventsSettings
from tests.integration.events.events_helpers import (
    SIGNAL_SUBJECT,
    events_server,
    retry_delay,
    steps,
    user,
)
from tests.support.pg_ctl import pg_ctl
from tests.support.tokens import as_user
from tests.support.waiting import eventually, stream_msg_ids
from tips.events.v1 import events_service_pb2 as ev
from tips.events.v1 import events_service_pb2_grpc as ev_grpc
from tipsmesh.localinfra import LocalNats, LocalPostgres, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CLIENTS = 4  # = events_ingest_max_in_flight: no call waits for a slot
BATCH = 25
PACE_SECONDS = 0.02  # between a client's batches: a steady load, not a flood
OUTAGE_SECONDS = 3.0  # of stopped server: a 1 s health probe must see it
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def caller_metadata(user_id: str) -> tuple[tuple[str, str], ...]:
    """How a caller says who it is (the one place to change when identity changes)."""
    return as_user(user_id)


@dataclass
class Load:
    """What the phones saw."""

    sent: int = 0  # signals in settled batches
    accepted: int = 0
    duplicates: int = 0  # a retried batch whose first try had committed
    retries: int = 0  # UNAVAILABLE answers, each followed by the same batch again
    missing_retry_info: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # anything but UNAVAILABLE
    slowest_call: float = 0.0
    users: list[str] = field(default_factory=list)


@dataclass
class HealthLog:
    """Health as polled every 100 ms, by phase of the test."""

    phase: str = "warm-up"
    seen: dict[str, Counter[str]] = field(default_factory=dict)
    last: str = ""

    def record(self, status: str) -> None:
        self.seen.setdefault(self.phase, Counter())[status] += 1
        self.last = status


@pytest.fixture
async def own_nats() -> AsyncIterator[LocalNats]:
    store = Path(tempfile.mkdtemp(prefix="tips-nats-restarts-"))
    server = LocalNats(store, port=free_port())
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)
        shutil.rmtree(store, ignore_errors=True)


@pytest.fixture
async def own_postgres() -> AsyncIterator[LocalPostgres]:
    data_dir = Path(tempfile.mkdtemp(prefix="tips-pg-restarts-"))
    server = LocalPostgres(data_dir, port=free_port())
    await pg_ctl(server.start)
    try:
        # LocalPostgres trades durability for speed (synchronous_commit off): commit
        # as production does, so a stop cannot lose an acknowledged commit.
        conn = await asyncpg.connect(server.url)
        await conn.execute("ALTER DATABASE tips SET synchronous_commit = on")
        await conn.close()
        yield server
    finally:
        await pg_ctl(server.stop)
        shutil.rmtree(data_dir, ignore_errors=True)


async def _phone(stub: ev_grpc.EventsServiceStub, n: int, load: Load, stop: asyncio.Event) -> None:
    """Batches of fresh client ids until ``stop``; each one sent until it is settled."""
    user_id = user()
    load.users.append(user_id)
    loop = asyncio.get_running_loop()
    seq = 0
    while not stop.is_set():
        seq += 1
        batch = [steps(1 + j, f"p{n}-{seq}-{j}") for j in range(BATCH)]
        request = ev.BatchIngestSignalsRequest(parent=f"users/{user_id}", signals=batch)
        give_up = loop.time() + 90
        while True:
            began = loop.time()
            try:
                response = await stub.BatchIngestSignals(
                    request, metadata=caller_metadata(user_id), timeout=15
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or loop.time() > give_up:
                    load.errors[exc.code().name] += 1
                    break  # counted; this batch is not settled and not counted as sent
                load.retries += 1
                delay = retry_delay(exc)
                if delay is None:
                    load.missing_retry_info += 1
                    delay = 0.5
                await asyncio.sleep(min(delay, 1.0))
                continue
            load.slowest_call = max(load.slowest_call, loop.time() - began)
            if response.rejected_count:
                load.errors["REJECTED"] += response.rejected_count
            load.sent += len(batch)
            load.accepted += response.accepted_count
            load.duplicates += response.duplicate_count
            break
        await asyncio.sleep(PACE_SECONDS)


async def _poll_health(channel: grpc.aio.Channel, log: HealthLog, stop: asyncio.Event) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    while not stop.is_set():
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            log.record(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
        except grpc.aio.AioRpcError as exc:
            log.record(f"error {exc.code().name}")
        await asyncio.sleep(0.1)


async def _until(what: Callable[[], bool], within: float = 60.0) -> None:
    async def probe() -> bool:
        return what()

    await eventually(probe, lambda ok: ok, within=within, every=0.1)


@pytest.mark.parametrize(
    ("relay_process", "db_retry_seconds"),
    [
        # The defaults: a restart of a few seconds is waited out inside the calls.
        pytest.param(False, 4.0, id="relay-in-service"),
        # `tips up` runs the relay in a child process; and a retry budget shorter
        # than the outage, so calls are answered UNAVAILABLE and phones retry.
        pytest.param(True, 0.5, id="relay-child-short-retry-budget"),
    ],
)
async def test_postgres_and_nats_restarts_under_load(
    own_postgres: LocalPostgres, own_nats: LocalNats, relay_process: bool, db_retry_seconds: float
) -> None:
    began = time.monotonic()
    settings = EventsSettings(
        database_url=own_postgres.url,
        nats_url=own_nats.url,
        db_role_password="restarts-under-load",
        events_consent_gate=False,  # no profile service here
        log_format="text",
        log_level="WARNING",
        events_relay_process=relay_process,
        db_retry_seconds=db_retry_seconds,
    )
    await migrate(settings, [EVENTS])
    load, health = Load(), HealthLog()
    stop_load, stop_health = asyncio.Event(), asyncio.Event()
    try:
        async with (
            events_server(settings) as server,
            grpc.aio.insecure_channel(server.address) as channel,
        ):
            stub = ev_grpc.EventsServiceStub(channel)
            poller = asyncio.create_task(_poll_health(channel, health, stop_health))
            phones = [asyncio.create_task(_phone(stub, n, load, stop_load)) for n in range(CLIENTS)]

            # A steady load for a while first: health stays SERVING under it.
            warm = time.monotonic() + 3.0
            await _until(lambda: load.sent >= 1000 and time.monotonic() > warm)
            health.phase = "postgres down"
            await pg_ctl(own_postgres.stop)
            await asyncio.sleep(OUTAGE_SECONDS)
            health.phase = "postgres starting"
            await pg_ctl(own_postgres.start)
            health.phase = "postgres back"
            settled = load.sent
            await _until(lambda: load.sent >= settled + 1000 and health.last == "SERVING")

            health.phase = "nats down"
            await asyncio.to_thread(own_nats.stop)
            await asyncio.sleep(OUTAGE_SECONDS)
            await asyncio.to_thread(own_nats.start)
            health.phase = "nats back"
            settled = load.sent
            await _until(lambda: load.sent >= settled + 1000)

            stop_load.set()
            await asyncio.gather(*phones)
            load_seconds = time.monotonic() - began

            # Everything reaches the stream; health is SERVING again.
            conn = await asyncpg.connect(own_postgres.url)
            try:
                await eventually(
                    lambda: conn.fetchval(
                        "SELECT count(*) FROM events.outbox WHERE published_at IS NULL"
                    ),
                    lambda pending: pending == 0,
                    within=120,
                    every=0.5,
                )
                rows = await conn.fetch(
                    "SELECT user_id, client_signal_id,"
                    " 'users/' || user_id || '/signals/' || id AS name"
                    " FROM events.signals WHERE user_id = ANY($1::text[])",
                    load.users,
                )
            finally:
                await conn.close()
            # The health probe of NATS may still be catching up with the relay's
            # reconnect: "after" starts at the first SERVING, and must stay SERVING.
            await _until(lambda: health.last == "SERVING")
            health.phase = "after"
            await _until(lambda: health.seen.get("after", Counter())["SERVING"] >= 3)
            stop_health.set()
            await poller
            ids = await stream_msg_ids(own_nats.url, "TIPS_EVENTS", SIGNAL_SUBJECT)
    finally:
        stop_load.set()
        stop_health.set()
        await close_channels()

    stored = len(rows)
    distinct_stored = len({(r["user_id"], r["client_signal_id"]) for r in rows})
    names = {r["name"] for r in rows}
    on_stream, distinct_on_stream = len(ids), len(set(ids))
    print(
        f"\nrestarts under load: sent {load.sent} / stored {stored} / on stream {on_stream}"
        f" / duplicates on stream {on_stream - distinct_on_stream}"
        f" / client retries (UNAVAILABLE) {load.retries}"
        f" / DUPLICATE outcomes {load.duplicates} / other errors {dict(load.errors)}"
        f" / slowest settled call {load.slowest_call:.2f} s / load {load_seconds:.1f} s"
        f" / total {time.monotonic() - began:.1f} s"
    )
    print(f"health by phase: { {p: dict(c) for p, c in health.seen.items()} }")

    assert not load.errors, load.errors
    assert load.missing_retry_info == 0, "every UNAVAILABLE must carry RetryInfo"
    assert load.accepted + load.duplicates == load.sent
    assert stored == distinct_stored == load.sent, (stored, distinct_stored, load.sent)
    assert on_stream == distinct_on_stream, f"{on_stream - distinct_on_stream} messages twice"
    assert set(ids) == names
    # Health followed the dependencies, and only them.
    assert set(health.seen["warm-up"]) == {"SERVING"}, health.seen
    assert health.seen["postgres down"]["NOT_SERVING"] > 0, health.seen
    assert health.seen["nats down"]["NOT_SERVING"] > 0, health.seen
    assert set(health.seen["after"]) == {"SERVING"}, health.seen
    if db_retry_seconds < OUTAGE_SECONDS:
        assert load.retries > 0, "an outage longer than the retry budget is answered UNAVAILABLE"

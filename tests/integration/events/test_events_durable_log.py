"""Nothing lost, nothing twice: 10,000 signals ingested through a NATS outage, then
through a PostgreSQL outage.

Each test runs its own NATS (and, for the second, its own PostgreSQL) so it
can stop and restart them; the session's servers are never touched. Phones
are simulated as a phone behaves: a refused batch (UNAVAILABLE or
RESOURCE_EXHAUSTED, with RetryInfo) is sent again, with the same client ids,
after the hinted delay. Afterwards the store holds exactly 10,000 signals and
the stream exactly 10,000 messages, one per stored signal.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import grpc
import pytest

from kernel.clients import close_channels
from kernel.migrations import migrate
from services.events.service import SERVICE as EVENTS
from services.events.settings import EventsSettings
from tests.integration.events.events_helpers import (
    SIGNAL_SUBJECT,
    PhoneStats,
    events_server,
    send_until_settled,
    steps,
    user,
)
from tests.support.pg_ctl import pg_ctl
from tests.support.waiting import eventually, stream_msg_ids
from tips.events.v1 import events_service_pb2_grpc as ev_grpc
from tipsmesh.localinfra import LocalNats, LocalPostgres, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOTAL = 10_000
BATCH = 500
USERS = 5
CLIENTS = 4
OUTAGE_SECONDS = 3.0


@pytest.fixture
async def own_nats() -> AsyncIterator[LocalNats]:
    store = Path(tempfile.mkdtemp(prefix="tips-nats-ev-"))
    server = LocalNats(store)
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)
        shutil.rmtree(store, ignore_errors=True)


def _settings(database_url: str, nats_url: str, prefix: str) -> EventsSettings:
    return EventsSettings(
        db_role_password="events-outage-test",
        events_consent_gate=False,  # no profile service: gate tested in test_events_consent.py
        database_url=database_url,
        nats_url=nats_url,
        db_role_prefix=prefix,
        log_format="text",
        log_level="WARNING",
        # Small enough that the NATS outage fills it: clients must see RESOURCE_EXHAUSTED.
        events_outbox_max_backlog=2000,
        events_retry_after_seconds=0.3,
    )


async def _ingest_with_outage(
    address: str, interrupt: Callable[[], Awaitable[None]]
) -> tuple[PhoneStats, list[str]]:
    """10,000 signals from several users and clients; ``interrupt`` runs a third of the way in."""
    users = [user() for _ in range(USERS)]
    batches = [
        (users[i % USERS], [steps(i % 1000, f"c{i}-{j}") for j in range(BATCH)])
        for i in range(TOTAL // BATCH)
    ]
    stats = PhoneStats()
    third = asyncio.Event()

    async with grpc.aio.insecure_channel(address) as channel:
        stub = ev_grpc.EventsServiceStub(channel)

        async def phone(queue: asyncio.Queue[tuple[str, list]]) -> None:  # type: ignore[type-arg]
            while not queue.empty():
                user_id, batch = queue.get_nowait()
                await send_until_settled(stub, user_id, batch, stats)
                if stats.settled >= TOTAL // 3:
                    third.set()

        async def outage() -> None:
            await third.wait()
            await interrupt()

        queue: asyncio.Queue[tuple[str, list]] = asyncio.Queue()  # type: ignore[type-arg]
        for item in batches:
            queue.put_nowait(item)
        breaker = asyncio.create_task(outage())
        await asyncio.gather(*(phone(queue) for _ in range(CLIENTS)))
        await breaker
    return stats, users


async def _check_exactly_once(
    db_url: str, nats_url: str, users: list[str], stats: PhoneStats
) -> None:
    assert stats.settled == TOTAL
    assert stats.accepted + stats.duplicates == TOTAL
    assert stats.missing_retry_info == 0, "every refusal must carry RetryInfo"
    conn = await asyncpg.connect(db_url)
    try:
        stored = await conn.fetchval(
            "SELECT count(*) FROM events.signals WHERE user_id = ANY($1::text[])", users
        )
        assert stored == TOTAL, (stored, stats)
        await eventually(
            lambda: conn.fetchval("SELECT count(*) FROM events.outbox WHERE published_at IS NULL"),
            lambda pending: pending == 0,
            within=40,
        )
        rows = await conn.fetch(
            "SELECT 'users/' || user_id || '/signals/' || id AS name FROM events.signals"
            " WHERE user_id = ANY($1::text[])",
            users,
        )
    finally:
        await conn.close()
    names = {r["name"] for r in rows}
    ids = await stream_msg_ids(nats_url, "TIPS_EVENTS", SIGNAL_SUBJECT)
    assert len(ids) == TOTAL, f"{len(ids) - len(set(ids))} messages twice"
    assert set(ids) == names


async def test_nats_outage_loses_nothing_and_publishes_nothing_twice(
    create_database: Callable[[], Awaitable[str]], db_role_prefix: str, own_nats: LocalNats
) -> None:
    db_url = await create_database()
    settings = _settings(db_url, own_nats.url, db_role_prefix)
    await migrate(settings, [EVENTS])

    async def stop_and_restart_nats() -> None:
        await asyncio.to_thread(own_nats.stop)
        await asyncio.sleep(OUTAGE_SECONDS)
        await asyncio.to_thread(own_nats.start)

    try:
        async with events_server(settings) as server:
            stats, users = await _ingest_with_outage(server.address, stop_and_restart_nats)
            await _check_exactly_once(db_url, own_nats.url, users, stats)
    finally:
        await close_channels()
    # The outbox absorbed the outage up to its limit, then ingest pushed back.
    assert stats.refusals.get("RESOURCE_EXHAUSTED", 0) > 0, stats


async def _stop(pg: LocalPostgres) -> None:
    await pg_ctl(pg.stop)


async def test_postgres_outage_stores_nothing_twice(own_nats: LocalNats) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="tips-pg-ev-"))
    pg = LocalPostgres(data_dir, port=free_port())
    admin_url = await asyncio.to_thread(pg.start)
    try:
        # LocalPostgres trades durability for speed (synchronous_commit off): a stop
        # that falls back to immediate mode would lose acknowledged commits, which
        # no production server does. Commit as production does.
        conn = await asyncpg.connect(admin_url)
        await conn.execute("ALTER DATABASE tips SET synchronous_commit = on")
        await conn.close()
        # No waiting out the restart inside the calls (tests/integration/
        # test_restarts_under_load.py covers that): phones see UNAVAILABLE and resend.
        settings = _settings(admin_url, own_nats.url, "tips_").model_copy(
            update={"db_retry_seconds": 0.0}
        )
        await migrate(settings, [EVENTS])

        async def stop_and_restart_postgres() -> None:
            await _stop(pg)
            await asyncio.sleep(OUTAGE_SECONDS)
            await pg_ctl(pg.start)

        try:
            async with events_server(settings) as server:
                stats, users = await _ingest_with_outage(server.address, stop_and_restart_postgres)
                await _check_exactly_once(admin_url, own_nats.url, users, stats)
        finally:
            await close_channels()
        assert stats.refusals.get("UNAVAILABLE", 0) > 0, stats
    finally:
        await _stop(pg)
        shutil.rmtree(data_dir, ignore_errors=True)

"""The relay child process: publishes, is restarted when it dies, never outlives the service."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable

import pytest

from kernel.migrations import migrate
from kernel.settings import Settings
from services.events.relay_process import RelaySupervisor
from services.events.service import SERVICE as EVENTS
from services.events.settings import EventsSettings

pytestmark = pytest.mark.integration


async def _wait_exit(pid: int, within: float = 15) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + within
    while loop.time() < give_up:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"relay process {pid} still running after {within}s")


async def test_supervisor_restarts_a_dead_relay_and_stops_it_on_shutdown(
    create_database: Callable[[], Awaitable[str]], db_role_prefix: str, settings: Settings
) -> None:
    db_url = await create_database()
    events = EventsSettings(
        events_consent_gate=False,  # no profile service: gate tested in test_events_consent.py
        database_url=db_url, nats_url=settings.nats_url, db_role_prefix=db_role_prefix,
        db_role_password=settings.db_role_password,
        log_format="text", log_level="WARNING",
    )  # fmt: skip
    await migrate(events, [EVENTS])
    supervisor = RelaySupervisor(events, stop_timeout=6)
    task = asyncio.create_task(supervisor.run())
    try:
        async with asyncio.timeout(30):
            await supervisor.started.wait()
        assert supervisor.process is not None
        first = supervisor.process.pid
        os.kill(first, signal.SIGKILL)  # a crash: the supervisor starts another
        await _wait_exit(first)
        for _ in range(300):  # restarted after its backoff, once the new one spawned
            if supervisor.process.pid != first:
                break
            await asyncio.sleep(0.1)
        second = supervisor.process.pid
        assert second != first
        await asyncio.sleep(1.0)  # let it get into its relay loop
        assert supervisor.process.returncode is None
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # Cancelled like the kernel does at shutdown: EOF on its stdin ends it.
    await _wait_exit(second, within=10)

"""Health follows dependencies (kernel.dependency_health) and idempotent DB work retries a
database that went away (Database.retrying): probes and work are stand-ins, no server."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from grpc_health.v1._async import HealthServicer

from kernel import deadline
from kernel.db import Database
from kernel.dependency_health import NOT_SERVING, SERVING, DependencyHealth, Probe

pytestmark = pytest.mark.unit

NAMES = ("tips.test.v1.AService", "tips.test.v1.BService")


class Switch:
    """A dependency a test turns off and on."""

    def __init__(self) -> None:
        self.up = True

    async def check(self) -> None:
        if not self.up:
            raise ConnectionRefusedError("connection refused")


async def _statuses(health: HealthServicer) -> set[int]:
    return {int(health._server_status[name]) for name in ("", *NAMES)}


async def _serving(health: HealthServicer) -> None:
    for name in ("", *NAMES):
        await health.set(name, SERVING)


async def test_not_serving_while_a_dependency_is_down_one_line_per_transition(
    caplog: pytest.LogCaptureFixture,
) -> None:
    health = HealthServicer()
    await _serving(health)
    db, bus = Switch(), Switch()
    watcher = DependencyHealth(
        health, NAMES, [Probe("PostgreSQL", db.check), Probe("NATS", bus.check)]
    )
    caplog.set_level(logging.INFO, logger="tips.health")

    assert await watcher.check()
    assert await _statuses(health) == {SERVING}
    assert not caplog.records  # nothing logged while all is well

    db.up = False
    for _ in range(3):  # probes keep failing: one line, not three
        assert not await watcher.check()
        assert await _statuses(health) == {NOT_SERVING}
    bus.up = False
    assert not await watcher.check()
    db.up = True
    assert not await watcher.check()  # NATS still down
    assert await _statuses(health) == {NOT_SERVING}
    bus.up = True
    assert await watcher.check()
    assert await _statuses(health) == {SERVING}
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "dependency down: health NOT_SERVING"
    assert messages[-1] == "dependencies back: health SERVING"
    assert len(messages) == 4  # down, down set changed (+NATS), changed (-PostgreSQL), back


async def test_a_slow_probe_counts_as_down_and_drain_wins() -> None:
    health = HealthServicer()
    await _serving(health)

    async def hangs() -> None:
        await asyncio.sleep(10)

    slow = DependencyHealth(health, NAMES, [Probe("PostgreSQL", hangs)], timeout=0.05)
    assert not await slow.check()
    assert "no answer" in slow.down["PostgreSQL"]

    await health.enter_graceful_shutdown()
    fine = DependencyHealth(health, NAMES, [Probe("PostgreSQL", Switch().check)])
    fine.down = {"PostgreSQL": "was down"}
    assert await fine.check()
    assert await _statuses(health) == {NOT_SERVING}  # draining stays NOT_SERVING


async def test_run_follows_the_dependency_until_cancelled() -> None:
    health = HealthServicer()
    await _serving(health)
    db = Switch()
    watcher = DependencyHealth(health, NAMES, [Probe("PostgreSQL", db.check)], interval=0.01)
    task = asyncio.create_task(watcher.run())
    try:
        db.up = False
        for _ in range(500):
            if await _statuses(health) == {NOT_SERVING}:
                break
            await asyncio.sleep(0.01)
        assert await _statuses(health) == {NOT_SERVING}
        db.up = True
        for _ in range(500):
            if await _statuses(health) == {SERVING}:
                break
            await asyncio.sleep(0.01)
        assert await _statuses(health) == {SERVING}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


class FlakyDatabase(Database):
    """A Database whose transactions fail ``failures`` times with ``error``."""

    def __init__(self, failures: int, error: Exception, retry_seconds: float = 4.0) -> None:
        super().__init__(engine=None, service="test", retry_seconds=retry_seconds)  # type: ignore[arg-type]
        self.failures, self.error, self.attempts = failures, error, 0

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise self.error
        yield None


async def _work(_session: Any) -> str:
    return "done"


async def test_retrying_outlasts_a_short_outage() -> None:
    db = FlakyDatabase(3, ConnectionRefusedError("refused"))
    assert await db.retrying(_work, first_delay=0.01) == "done"
    assert db.attempts == 4


async def test_retrying_raises_other_errors_at_once() -> None:
    db = FlakyDatabase(1, ValueError("a bug"))
    with pytest.raises(ValueError):
        await db.retrying(_work, first_delay=0.01)
    assert db.attempts == 1


async def test_retrying_stays_within_its_budget_and_the_deadline() -> None:
    db = FlakyDatabase(10**6, ConnectionRefusedError("refused"), retry_seconds=0.3)
    began = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        await db.retrying(_work, first_delay=0.01, max_delay=0.05)
    assert 0.2 < time.monotonic() - began < 2.0

    with deadline.deadline_in(0.4):  # the call has 0.4 s: ~0.3 s of retries at most
        began = time.monotonic()
        with pytest.raises(ConnectionRefusedError):
            await db.retrying(_work, budget=30.0, first_delay=0.01, max_delay=0.05)
    assert time.monotonic() - began < 0.4 + 1.0


async def test_retrying_gives_up_on_an_attempt_out_of_its_own_time() -> None:
    class Hung(FlakyDatabase):
        @asynccontextmanager
        async def transaction(self) -> AsyncIterator[Any]:
            self.attempts += 1
            await asyncio.sleep(10)
            yield None

    db = Hung(0, OSError())
    with pytest.raises(TimeoutError):
        await db.retrying(_work, attempt_timeout=0.05)
    assert db.attempts == 1

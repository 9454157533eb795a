"""Runs due syncs: polls the database, leases due connections, bounded per provider.

Each replica polls every ``integrations_scheduler_poll_seconds`` (and at once
when ``wake`` is called: an on-demand sync, a consent grant). Due rows are
leased with ``FOR UPDATE SKIP LOCKED``, so two replicas never take the same
connection; a replica takes at most ``max_concurrency`` connections of a
provider at a time (its free slots), which bounds load on each provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from kernel.db import Database
from services.integrations import store
from services.integrations.connectors.registry import all_connectors
from services.integrations.core.sync import SyncEngine
from services.integrations.settings import IntegrationsSettings

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, db: Database, engine: SyncEngine, settings: IntegrationsSettings) -> None:
        self.db = db
        self.engine = engine
        self.settings = settings
        self._wake = asyncio.Event()
        self.limits = {
            pid: settings.provider_client(pid).max_concurrency for pid in all_connectors()
        }
        self.running: dict[str, int] = dict.fromkeys(self.limits, 0)
        self._tasks: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        self._wake.set()

    async def tick(self) -> int:
        """Lease and start what is due and fits the limits; returns how many started."""
        started = 0
        for provider, limit in self.limits.items():
            free = limit - self.running[provider]
            if free <= 0:
                continue
            async with self.db.transaction() as session:
                rows = await store.claim_due(
                    session, provider, free, self.settings.integrations_sync_lease_seconds
                )
            for row in rows:
                self.running[provider] += 1
                task = asyncio.create_task(self._run(row))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                started += 1
        return started

    async def _run(self, row: Any) -> None:
        try:
            await self.engine.run(row)
        except Exception:
            # The engine records failures itself; this is a bug or the DB being down.
            log.exception("scheduled sync crashed", extra={"provider": row.provider})
        finally:
            self.running[row.provider] -= 1
            self._wake.set()  # a slot is free

    async def run(self) -> None:
        """Until cancelled; running syncs are cancelled with it (their lease lapses)."""
        try:
            while True:
                self._wake.clear()
                try:
                    await self.tick()
                except Exception as exc:
                    log.warning("scheduler tick failed", extra={"error": repr(exc)})
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.integrations_scheduler_poll_seconds):
                        await self._wake.wait()
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

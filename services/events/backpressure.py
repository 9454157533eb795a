"""Admission and storage of ingest batches, with backpressure.

Ingest never queues without bound. A call is refused with a retry hint
(``google.rpc.RetryInfo``) instead of waiting when:

- the store is down or unreachable for longer than ``db_retry_seconds``
  (within the call's deadline): UNAVAILABLE. A shorter outage (a restart)
  is waited out: a call arriving while the monitor finds the store down
  waits for it (holding no slot), a call whose own transaction found it
  gone retries it (``Database.retrying``; ingest is idempotent by client id);
- the outbox backlog (stored, not yet on the stream: NATS down or slower
  than ingest) is above ``events_outbox_max_backlog``: RESOURCE_EXHAUSTED;
- ``events_ingest_max_in_flight`` calls are already in the store and no slot
  frees within ``events_ingest_queue_timeout_seconds``: RESOURCE_EXHAUSTED.

A background monitor measures the backlog and the store's health, so the
service recovers by itself once the relay drained and PostgreSQL is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta

from kernel import deadline
from kernel.db import Database, is_unavailable
from kernel.errors import ResourceExhausted, Unavailable
from services.events import store
from services.events.settings import EventsSettings

log = logging.getLogger(__name__)


class Ingress:
    """Stores ingest batches within the backpressure limits of ``settings``."""

    def __init__(self, db: Database, settings: EventsSettings) -> None:
        self.db = db
        self.settings = settings
        self._slots = asyncio.Semaphore(settings.events_ingest_max_in_flight)
        self.backlog = 0
        self._store_down_at: float | None = None
        self._store_up = asyncio.Event()  # set while the store is thought reachable
        self._store_up.set()

    @property
    def retry_after(self) -> timedelta:
        return timedelta(seconds=self.settings.events_retry_after_seconds)

    def soft_delay(self) -> timedelta | None:
        """A hint to slow down while the backlog is above half its limit."""
        if self.backlog * 2 >= self.settings.events_outbox_max_backlog:
            return self.retry_after
        return None

    def _mark_down(self) -> None:
        if self._store_down_at is None:
            log.warning("event store unreachable: ingest waits for it, then answers UNAVAILABLE")
        self._store_down_at = time.monotonic()
        self._store_up.clear()

    async def _wait_for_store(self, give_up: float) -> None:
        """Return once the store is thought reachable; Unavailable at ``give_up``.

        A restart of a few seconds is waited out here (by no slot and no
        connection), then the call goes on; a longer outage is answered.
        """
        if self._store_up.is_set():
            return
        try:
            async with asyncio.timeout(max(0.0, give_up - time.monotonic())):
                await self._store_up.wait()
        except TimeoutError:
            raise Unavailable(
                "the signal store is unavailable; retry later",
                reason="STORE_UNAVAILABLE",
                retry_after=self.retry_after,
            ) from None

    def _check_backlog(self) -> None:
        if self.backlog >= self.settings.events_outbox_max_backlog:
            raise ResourceExhausted(
                "too many signals are waiting to be published; retry later",
                reason="OUTBOX_BACKLOG",
                metadata={"backlog": str(self.backlog)},
                retry_after=self.retry_after,
            )

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.settings.events_ingest_queue_timeout_seconds):
                await self._slots.acquire()
        except TimeoutError:
            raise ResourceExhausted(
                "too many ingest calls in flight; retry later",
                reason="INGEST_CONCURRENCY",
                retry_after=self.retry_after,
            ) from None
        try:
            yield
        finally:
            self._slots.release()

    async def store(self, items: Sequence[store.NewSignal]) -> list[store.Ingested]:
        """Store ``items`` in one transaction, or raise Unavailable / ResourceExhausted."""
        if not items:
            return []
        give_up = time.monotonic() + deadline.within(self.db.retry_seconds)
        await self._wait_for_store(give_up)
        self._check_backlog()
        async with self._slot():
            self._check_backlog()  # the backlog may have grown while waiting
            try:
                # Idempotent by client id (ON CONFLICT DO NOTHING): a store that went
                # away (a restart) is retried within the call's deadline, so a short
                # outage is absorbed here instead of failing the call.
                result = await self.db.retrying(
                    lambda session: store.insert_signals(session, items),
                    budget=max(0.0, give_up - time.monotonic()),
                    attempt_timeout=self.settings.events_ingest_timeout_seconds,
                )
            except TimeoutError:
                self._mark_down()
                raise Unavailable(
                    "the signal store did not answer in time; retry later",
                    reason="STORE_TIMEOUT",
                    retry_after=self.retry_after,
                ) from None
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                self._mark_down()
                # The commit may or may not have happened: a retry with the same
                # client ids is answered DUPLICATE for what did commit.
                raise Unavailable(
                    "the signal store is unavailable; retry later",
                    reason="STORE_UNAVAILABLE",
                    retry_after=self.retry_after,
                ) from None
        self.backlog += sum(1 for r in result if r.created)  # until the next measure
        return result

    async def measure(self) -> None:
        """One health check: the backlog (bounded count) and whether the store answers."""
        cap = self.settings.events_outbox_max_backlog + 1
        try:
            async with asyncio.timeout(max(1.0, self.settings.events_backlog_check_seconds * 4)):
                async with self.db.session() as session:
                    self.backlog = await store.pending_outbox(session, cap)
        except Exception as exc:
            if isinstance(exc, TimeoutError) or is_unavailable(exc):
                self._mark_down()
                return
            raise
        if self._store_down_at is not None:
            log.info("event store reachable again: ingest resumes")
        self._store_down_at = None
        self._store_up.set()

    async def monitor(self) -> None:
        """Measure until cancelled."""
        while True:
            try:
                await self.measure()
            except Exception:
                log.exception("ingest monitor check failed")
            await asyncio.sleep(self.settings.events_backlog_check_seconds)

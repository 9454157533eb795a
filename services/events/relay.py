"""The events outbox relay: ``kernel.outbox.OutboxRelay`` with pipelined publishes.

The kernel relay awaits each JetStream ack before the next publish (about
2.5k msg/s here). Signals arrive in batches of hundreds, so this relay sends
a whole batch of outbox rows at once, awaits all the acks, and marks the
acked rows in one UPDATE. The guarantees are the kernel's:

- a row is marked only after JetStream acked it; a failed or timed-out
  publish leaves it pending and it is sent again, with the same
  ``Nats-Msg-Id``, which the stream's duplicate window drops;
- one relay per table at a time (the advisory lock);
- rows are sent in id order; after a partial failure a later row may be on
  the stream before an earlier one is resent (consumers order by signal
  time, not by stream sequence).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select, update

from kernel.bus import MSG_ID_HEADER, BusError
from kernel.outbox import OutboxRelay


class BatchOutboxRelay(OutboxRelay):
    """Publishes up to ``batch`` pending rows concurrently per round."""

    async def drain_once(self) -> int:
        t = self.table
        async with self.db.transaction() as session:
            locked = await session.execute(select(func.pg_try_advisory_xact_lock(self._lock_key)))
            if not locked.scalar():
                return 0
            rows = (
                await session.execute(
                    select(t.c.id, t.c.subject, t.c.payload, t.c.headers)
                    .where(t.c.published_at.is_(None))
                    .order_by(t.c.id)
                    .limit(self.batch)
                )
            ).all()
            if not rows:
                return 0
            acks = await self._publish_all(rows)
            published = [r.id for r, ack in zip(rows, acks, strict=True) if not _failed(ack)]
            if published:
                await session.execute(
                    update(t).where(t.c.id.in_(published)).values(published_at=func.now())
                )
        errors = [ack for ack in acks if _failed(ack)]
        if errors:
            raise errors[0]
        return len(published)

    async def _publish_all(self, rows: Sequence[Any]) -> list[Any]:
        """Send every row, then wait (bounded) for the acks; a missing ack is an error.

        JetStream's ``publish_async`` writes the messages back to back, in row
        order, and matches acks as they come. It is reached through the bus's
        JetStream context (kernel.bus has no batch publish yet).
        """
        js = self.bus._js
        futures: list[asyncio.Future[Any]] = []
        acks: list[Any] = []
        for row in rows:
            if MSG_ID_HEADER not in row.headers:
                acks.append(BusError(f"outbox row {row.id} has no {MSG_ID_HEADER} header"))
                continue
            try:
                future = await js.publish_async(row.subject, row.payload, headers=row.headers)
            except Exception as exc:  # e.g. the reconnect buffer is full
                acks.append(exc)
                break
            futures.append(future)
            acks.append(future)
        acks.extend(BusError("not sent: an earlier publish failed") for _ in rows[len(acks) :])
        if futures:
            _done, pending = await asyncio.wait(futures, timeout=self.publish_timeout)
            for future in pending:
                future.cancel()  # frees its slot in the client's pending-acks limit
        return [_outcome(a) for a in acks]


def _outcome(ack: Any) -> Any:
    if not isinstance(ack, asyncio.Future):
        return ack
    if ack.cancelled():
        return TimeoutError("no ack from JetStream in time")
    return ack.exception() or ack.result()


def _failed(ack: Any) -> bool:
    return isinstance(ack, BaseException)

"""The events outbox relay: ``kernel.outbox.OutboxRelay``, batched and pipelined.

The kernel relay awaits each JetStream ack before the next publish (about
2.5k msg/s here) and marks each published row, pruning it later. Signals
arrive in batches of hundreds, so this relay sends a whole batch of outbox
rows with ``Bus.publish_many`` (written back to back, acks awaited
together) and marks the acked rows in one UPDATE (one array parameter, not
one per row). Marked rows are pruned later, as the kernel does: they stay
visible a while for debugging and tests. The guarantees are the kernel's:

- a row is marked only after JetStream acked it, in the transaction that
  holds the advisory lock; a failed or timed-out publish leaves it
  pending, and it is sent again with the same ``Nats-Msg-Id``, which the
  stream's duplicate window drops;
- one relay per table at a time (the advisory lock), whichever process runs it;
- rows are sent in id order; after a partial failure a later row may be on
  the stream before an earlier one is resent (consumers order by signal
  time, not by stream sequence).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, any_, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY

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
            acks = await self.bus.publish_many(
                [(r.subject, r.payload, r.headers) for r in rows], ack_timeout=self.publish_timeout
            )
            published = [r.id for r, ack in zip(rows, acks, strict=True) if ack_ok(ack)]
            if published:
                # One array parameter, not one bind parameter per row.
                ids = bindparam("ids", published, type_=ARRAY(BigInteger))
                await session.execute(
                    update(t).where(t.c.id == any_(ids)).values(published_at=func.now())
                )
        errors = [ack for ack in acks if isinstance(ack, Exception)]
        if errors:
            raise errors[0]
        return len(published)


def ack_ok(ack: object) -> bool:
    return not isinstance(ack, BaseException)

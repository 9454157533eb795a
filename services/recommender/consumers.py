"""Keeps every user's context current from the ``SignalRecorded`` stream.

The hot path (``ListTips``) reads contexts from memory; each change is also
written to ``recommender.user_context`` in the same transaction as the
message's claim, so a restart reloads the contexts and a redelivered message
changes nothing. Memory is updated only after the commit.

Replicas share the consumer, so each signal is folded by one of them. Every
stored change bumps the row's version and is announced on NOTIFY
(``store.CONTEXT_CHANNEL``); each replica reloads the users another one
changed (``follow``). A replica whose copy is stale when it folds finds out
from the version (the conditional write touches no row) and folds onto the
stored context instead, so no replica's write can undo another's.

A ``tip_reaction`` signal is landed by ``core.reactions`` in the same
transaction (tip row, reward, done history, suppression); ``ReactToTip``
applies its own signal through ``apply`` with the same message id, so the
consumer skips it when it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from kernel.bus import Bus, Delivery
from kernel.consumers import consume_forever, event_user
from kernel.db import Database
from kernel.erasure import guard_user
from kernel.outbox import claim
from services.recommender import domain, reward_store, store
from services.recommender.core.learning import Learner
from services.recommender.core.reactions import Reactions, unchanged
from services.recommender.history import HistoryKeeper
from tips.events.v1 import events_pb2, signal_pb2

log = logging.getLogger(__name__)

DURABLE = "recommender-context"
# Clocks of replicas and database differ a little: catching up re-reads a margin.
CATCH_UP_MARGIN = timedelta(seconds=60)
# Catch up from the table this often even while LISTEN seems attached: a
# half-open connection looks attached and delivers nothing.
CATCH_UP_EVERY_S = 30.0
MAX_ERASED = 100_000


class ContextKeeper:
    """The in-memory read model of user contexts, and the consumer that feeds it."""

    def __init__(
        self,
        db: Database,
        durable: str = DURABLE,
        learner: Learner | None = None,
        history: HistoryKeeper | None = None,
    ) -> None:
        self.db = db
        self.durable = durable
        self.learner = learner
        self.reactions = Reactions(learner, history)
        self._contexts: dict[str, domain.UserContext] = {}
        self._versions: dict[str, int] = {}  # the stored version each copy is of
        self._writing: dict[str, int] = {}  # versions this process is committing now
        self._erased: dict[str, None] = {}  # users erased: insertion-ordered, bounded
        self._changed: set[str] = set()  # users another replica changed: reload them
        self._reloaded = asyncio.Event()
        self._loaded_at = datetime.now(UTC)

    def get(self, user_id: str) -> domain.UserContext:
        return self._contexts.get(user_id) or domain.UserContext(user_id=user_id)

    def _remember(self, ctx: domain.UserContext, version: int) -> None:
        if ctx.user_id in self._erased:
            return  # read before the purge committed: the user is gone
        if version > self._versions.get(ctx.user_id, 0):
            self._contexts[ctx.user_id], self._versions[ctx.user_id] = ctx, version

    def forget(self, user_id: str) -> None:
        """Drop an erased user's context, for good (no later read brings it back)."""
        self._contexts.pop(user_id, None)
        self._versions.pop(user_id, None)
        self._erased[user_id] = None
        while len(self._erased) > MAX_ERASED:
            del self._erased[next(iter(self._erased))]

    async def load(
        self, user_ids: Sequence[str] | None = None, changed_since: datetime | None = None
    ) -> int:
        """Memory from the persisted contexts (every user's, ``user_ids``', or those
        changed since ``changed_since``); how many were read."""
        if user_ids is None and changed_since is None:
            self._loaded_at = datetime.now(UTC)
        async with self.db.session() as session:
            stored = await store.load_contexts(session, user_ids, changed_since)
        for ctx, version in stored.values():
            self._remember(ctx, version)
        return len(stored)

    # --- other replicas' changes ------------------------------------------------------

    async def follow(self) -> None:
        """Reload the users other replicas change, as their NOTIFYs arrive, and catch
        up from the table now and then; until cancelled."""
        helpers = [
            asyncio.create_task(self._reload_changed()),
            asyncio.create_task(self._catch_up_every(CATCH_UP_EVERY_S)),
        ]
        try:
            await self.db.listen(
                store.CONTEXT_CHANNEL,
                self._on_change,
                on_attach=self._caught_up,
            )
        finally:
            for task in helpers:
                task.cancel()
            for task in helpers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _catch_up_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await self._caught_up()
            except Exception as exc:
                log.warning("context catch-up failed", extra={"error": repr(exc)})

    def _on_change(self, payload: str) -> None:
        user_id, _, version = payload.rpartition(" ")
        if version == "-1":
            self.forget(user_id)  # erased (by whichever replica's eraser)
        elif int(version) > max(self._versions.get(user_id, 0), self._writing.get(user_id, 0)):
            self._changed.add(user_id)  # another replica's change (not ours, not known)
            self._reloaded.set()

    async def _caught_up(self) -> None:
        """After (re)attaching: changes made while nobody listened are in the table."""
        started = datetime.now(UTC)
        await self.load(changed_since=self._loaded_at - CATCH_UP_MARGIN)
        self._loaded_at = started  # only once the read succeeded

    async def _reload_changed(self) -> None:
        while True:
            await self._reloaded.wait()
            self._reloaded.clear()
            users, self._changed = sorted(self._changed), set()
            try:
                await self.load(users)
            except Exception as exc:
                self._changed.update(users)  # next time
                log.warning("context reload failed", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)
                self._reloaded.set()

    async def handle(self, delivery: Delivery[events_pb2.SignalRecorded]) -> None:
        event = delivery.message
        user_id = event_user(delivery)
        if user_id is None:
            return
        await self.apply(delivery.msg_id or event.event_id, user_id, event.signal)

    async def apply(self, msg_id: str, user_id: str, signal: signal_pb2.Signal) -> bool:
        """Fold ``signal`` (message ``msg_id``) into the user's context, once.

        The one way a signal changes the recommender's state, the consumer's
        and ``ReactToTip``'s alike; False when ``msg_id`` was applied already.
        """
        is_reaction = signal.WhichOneof("payload") == "tip_reaction"
        if not (is_reaction and self.learner is not None):
            return await self._fold(msg_id, user_id, signal) is not None
        # Rewards commit and apply in one order (see core/learning.py).
        async with self.learner.lock:
            rewarded = await self._fold(msg_id, user_id, signal)
            if rewarded:
                self.learner.apply(rewarded)
        return rewarded is not None

    async def _fold(
        self, msg_id: str, user_id: str, signal: signal_pb2.Signal
    ) -> list[reward_store.Rewarded] | None:
        """The rewards assigned; None when ``msg_id`` was claimed before (nothing done)."""
        rewarded: list[reward_store.Rewarded] = []
        try:
            async with self.db.transaction() as session:
                if not await claim(session, store.processed, consumer=self.durable, msg_id=msg_id):
                    return None  # a redelivery: already folded in
                if await guard_user(session, store.processed, user_id):
                    return []  # delivered after the user's erasure: nothing may come back
                quiet: Callable[[domain.UserContext], domain.UserContext] = unchanged
                if signal.WhichOneof("payload") == "tip_reaction":
                    quiet = await self.reactions.land(session, user_id, signal, rewarded)
                ctx, saved = await self._store(session, user_id, signal, quiet)
                # Our own NOTIFY may arrive before the commit returns: not a change to reload.
                self._writing[user_id] = saved
            self._remember(ctx, saved)
        finally:
            self._writing.pop(user_id, None)
        return rewarded

    async def _store(
        self,
        session: AsyncSession,
        user_id: str,
        signal: signal_pb2.Signal,
        quiet: Callable[[domain.UserContext], domain.UserContext],
    ) -> tuple[domain.UserContext, int]:
        """The signal folded into the user's context, stored over the version our copy
        is of, or, when another replica changed it since, folded onto theirs."""
        ctx = quiet(domain.fold(self.get(user_id), signal))
        saved = await store.save_context(session, ctx, self._versions.get(user_id, 0))
        if saved is None:
            base, version = await store.lock_context(session, user_id)
            ctx = quiet(domain.fold(base, signal))
            saved = await store.save_context(session, ctx, version)
            if saved is None:
                raise RuntimeError(f"context of {user_id} changed while locked")
        return ctx, saved

    async def run(self, bus: Bus) -> None:
        """Consume until cancelled; waits for the events stream if it is not there yet."""
        await consume_forever(
            bus, events_pb2.SignalRecorded, durable=self.durable, handler=self.handle
        )

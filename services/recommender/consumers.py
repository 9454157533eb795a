"""Keeps every user's context current from the ``SignalRecorded`` stream.

The hot path (``ListTips``) reads contexts from memory; each change is also
written to ``recommender.user_context`` in the same transaction as the
message's claim, so a restart reloads the contexts and a redelivered message
changes nothing. Memory is updated only after the commit.

A ``tip_reaction`` signal is landed by ``core.reactions`` in the same
transaction (tip row, reward, done history, suppression); ``ReactToTip``
applies its own signal through ``apply`` with the same message id, so the
consumer skips it when it arrives.
"""

from __future__ import annotations

import logging

from kernel.bus import Bus, Delivery
from kernel.consumers import consume_forever, event_user
from kernel.db import Database
from kernel.erasure import guard_user
from kernel.outbox import claim
from services.recommender import domain, reward_store, store
from services.recommender.core.learning import Learner
from services.recommender.core.reactions import Reactions
from services.recommender.history import HistoryKeeper
from tips.events.v1 import events_pb2, signal_pb2

log = logging.getLogger(__name__)

DURABLE = "recommender-context"


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

    def get(self, user_id: str) -> domain.UserContext:
        return self._contexts.get(user_id) or domain.UserContext(user_id=user_id)

    def remember(self, ctx: domain.UserContext) -> None:
        self._contexts[ctx.user_id] = ctx

    def forget(self, user_id: str) -> None:
        """Drop an erased user's context."""
        self._contexts.pop(user_id, None)

    async def load(self) -> int:
        """Rebuild memory from the persisted contexts; returns how many were loaded."""
        async with self.db.session() as session:
            self._contexts = await store.load_contexts(session)
        return len(self._contexts)

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
        async with self.db.transaction() as session:
            if not await claim(session, store.processed, consumer=self.durable, msg_id=msg_id):
                return None  # a redelivery: already folded in
            if await guard_user(session, store.processed, user_id):
                return []  # delivered after the user's erasure: nothing may come back
            ctx = domain.fold(self.get(user_id), signal)
            if signal.WhichOneof("payload") == "tip_reaction":
                ctx = await self.reactions.land(session, user_id, signal, ctx, rewarded)
            await store.save_context(session, ctx)
        self.remember(ctx)
        return rewarded

    async def run(self, bus: Bus) -> None:
        """Consume until cancelled; waits for the events stream if it is not there yet."""
        await consume_forever(
            bus, events_pb2.SignalRecorded, durable=self.durable, handler=self.handle
        )

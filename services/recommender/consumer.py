"""Keeps every user's context current from the ``SignalRecorded`` stream.

The hot path (``ListTips``) reads contexts from memory; each change is also
written to ``recommender.user_context`` in the same transaction as the
message's claim, so a restart reloads the contexts and a redelivered message
changes nothing. Memory is updated only after the commit.

A ``tip_reaction`` signal lands the reaction in the tip history (whoever
posted it: ``ReactToTip`` or a client straight to the events service), keeps
the reacted catalog tip from being offered again for a while, and - the
first reaction only - gives the decision its reward (``RewardAssigned`` in
the same transaction), which the policy folds in right after the commit.
"""

from __future__ import annotations

import logging
from datetime import UTC

from sqlalchemy.ext.asyncio import AsyncSession

from kernel.bus import Bus, Delivery
from kernel.consumers import consume_forever
from kernel.db import Database
from kernel.errors import InvalidArgument
from kernel.identity import parse_user
from kernel.outbox import claim
from services.recommender import domain, reward_store, store
from services.recommender.history import HistoryKeeper
from services.recommender.learning import SOURCE_REACTION, Learner
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
        self.history = history
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
        signal = event.signal
        try:
            user_id = parse_user(event.user, "user")
        except InvalidArgument:
            # Redelivering cannot fix a malformed event: log it and ack it.
            log.error(
                "signal event without a valid user skipped", extra={"msg_id": delivery.msg_id}
            )
            return
        is_reaction = signal.WhichOneof("payload") == "tip_reaction"
        if is_reaction and self.learner is not None:
            # Rewards commit and apply in one order (see learning.py).
            async with self.learner.lock:
                rewarded = await self._fold(delivery, user_id, signal)
                if rewarded:
                    self.learner.apply(rewarded)
        else:
            await self._fold(delivery, user_id, signal)

    async def _fold(
        self, delivery: Delivery[events_pb2.SignalRecorded], user_id: str, signal: signal_pb2.Signal
    ) -> list[reward_store.Rewarded]:
        rewarded: list[reward_store.Rewarded] = []
        async with self.db.transaction() as session:
            msg_id = delivery.msg_id or delivery.message.event_id
            if not await claim(session, store.processed, consumer=self.durable, msg_id=msg_id):
                return []  # a redelivery: already folded in
            ctx = domain.fold(self.get(user_id), signal)
            if signal.WhichOneof("payload") == "tip_reaction":
                ctx = await self._land_reaction(session, user_id, signal, ctx, rewarded)
            await store.save_context(session, ctx)
        self.remember(ctx)
        return rewarded

    async def _land_reaction(
        self,
        session: AsyncSession,
        user_id: str,
        signal: signal_pb2.Signal,
        ctx: domain.UserContext,
        rewarded: list[reward_store.Rewarded],
    ) -> domain.UserContext:
        payload = signal.tip_reaction
        parts = payload.tip.split("/")
        if len(parts) != 4 or parts[1] != user_id:
            return ctx  # the events service validates this; never trust it blindly
        react_time = signal.start_time.ToDatetime(UTC)
        until = payload.snooze_until.ToDatetime(UTC) if payload.HasField("snooze_until") else None
        if payload.reaction == signal_pb2.TIP_REACTION_SNOOZE and until is None:
            until = react_time + domain.DEFAULT_SNOOZE
        catalog_tip = await store.apply_reaction(
            session, user_id, parts[3], reaction=payload.reaction, react_time=react_time,
            snooze_until=until,
        )  # fmt: skip
        if catalog_tip is None:
            log.info("reaction to an unknown tip ignored", extra={"tip": payload.tip})
            return ctx
        catalog_id = catalog_tip.removeprefix("catalogTips/")
        if self.learner is not None:
            reward = self.learner.reaction_reward(payload.reaction)
            got = await reward_store.assign(
                session, user_id, parts[3], reward, SOURCE_REACTION, react_time
            )
            if got is not None:
                await self.learner.enqueue_reward(
                    session, got, SOURCE_REACTION, payload.reaction, react_time
                )
                rewarded.append(got)
        if self.history is not None and payload.reaction == signal_pb2.TIP_REACTION_DONE:
            self.history.record_done(user_id, catalog_id, react_time)
        return domain.suppress(
            ctx, catalog_id, domain.quiet_until(payload.reaction, react_time, until)
        )

    async def run(self, bus: Bus) -> None:
        """Consume until cancelled; waits for the events stream if it is not there yet."""
        await consume_forever(
            bus, events_pb2.SignalRecorded, durable=self.durable, handler=self.handle
        )

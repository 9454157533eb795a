"""A reaction to a tip (done, snooze, dismiss), applied in one place.

A reaction reaches the recommender as a ``tip_reaction`` signal, whoever
posted it: ``ReactToTip`` or a client straight to the events service.
``Reactions.land`` is the only code that changes state because of one, inside
the transaction that claims the signal's message id (``ContextKeeper.apply``):

- the tip row: state, reaction, react time, snooze end;
- its reward, the first reaction only (``RewardAssigned`` through the outbox),
  which the policy folds in right after the commit;
- the done history (a done catalog tip is not offered again today);
- the user's context: the reacted catalog tip is not offered again for a while.

``ReactToTip`` lands its own reaction through that same path with the
signal's message id, so its answer shows it; the consumer then finds the id
claimed and skips it. Seeing a tip again is not a reaction: nothing here runs
for a ``ListTips``, which shows the active tips again (a reacted tip leaves
them here).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from kernel.timestamps import datetime_of, timestamp, to_datetime
from services.recommender import domain, reward_store, store
from services.recommender.core.learning import SOURCE_REACTION, Learner
from services.recommender.history import HistoryKeeper
from tips.events.v1 import signal_pb2

log = logging.getLogger(__name__)


def unchanged(ctx: domain.UserContext) -> domain.UserContext:
    """What a reaction that lands nothing does to a context."""
    return ctx


def reaction_signal(
    client_signal_id: str,
    tip_name: str,
    reaction: int,
    react_time: datetime,
    snooze_until: datetime | None,
) -> signal_pb2.Signal:
    """The app's ``tip_reaction`` signal for a reaction to ``tip_name``."""
    payload = signal_pb2.TipReactionPayload(tip=tip_name, reaction=reaction)  # type: ignore[arg-type]
    if snooze_until is not None:
        payload.snooze_until.CopyFrom(timestamp(snooze_until))
    return signal_pb2.Signal(
        client_signal_id=client_signal_id,
        kind=signal_pb2.SIGNAL_KIND_TIP_REACTION,
        source=signal_pb2.SIGNAL_SOURCE_APP,
        start_time=timestamp(react_time),
        tip_reaction=payload,
    )


class Reactions:
    """Lands reactions: tip row, reward, done history, suppression."""

    def __init__(self, learner: Learner | None, history: HistoryKeeper | None) -> None:
        self.learner = learner
        self.history = history

    async def land(
        self,
        session: AsyncSession,
        user_id: str,
        signal: signal_pb2.Signal,
        rewarded: list[reward_store.Rewarded],
    ) -> Callable[[domain.UserContext], domain.UserContext]:
        """The reaction in ``signal``: its writes made in ``session``, and what it
        does to the user's context (applied by the caller to whichever copy it
        stores).

        A reward assigned is appended to ``rewarded``: the caller folds it into
        the policy once the transaction has committed.
        """
        payload = signal.tip_reaction
        found = domain.TIP.match(payload.tip)
        if found is None or found[0] != user_id:
            return unchanged  # the events service validates this; never trust it blindly
        tip_id = found[1]
        react_time = to_datetime(signal.start_time)
        until = datetime_of(payload, "snooze_until")
        if payload.reaction == signal_pb2.TIP_REACTION_SNOOZE and until is None:
            until = react_time + domain.DEFAULT_SNOOZE
        catalog_tip = await store.apply_reaction(
            session, user_id, tip_id, reaction=payload.reaction, react_time=react_time,
            snooze_until=until,
        )  # fmt: skip
        if catalog_tip is None:
            log.info("reaction to an unknown tip ignored", extra={"tip": payload.tip})
            return unchanged
        catalog_id = catalog_tip.removeprefix("catalogTips/")
        if self.history is not None:
            self.history.close(user_id, payload.tip)  # ListTips no longer shows it
        if self.learner is not None:
            reward = self.learner.reaction_reward(payload.reaction)
            got = await reward_store.assign(
                session, user_id, tip_id, reward, SOURCE_REACTION, react_time
            )
            if got is not None:  # the first reaction to this decision
                await self.learner.enqueue_reward(
                    session, got, SOURCE_REACTION, payload.reaction, react_time
                )
                rewarded.append(got)
        if self.history is not None and payload.reaction == signal_pb2.TIP_REACTION_DONE:
            self.history.record_done(user_id, catalog_id, react_time)
        quiet = domain.quiet_until(payload.reaction, react_time, until)
        return lambda ctx: domain.suppress(ctx, catalog_id, quiet)

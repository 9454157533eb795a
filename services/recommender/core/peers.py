"""What the other recommender replicas decided, into this one's memory.

Each replica keeps the users' recent decisions (eligibility: cooldowns, the
daily cap) and active tips (``ListTips``) in memory; a decision another
replica made reaches it as ``TipDecided`` on an ephemeral consumer of its own
(``Bus.follow``). The event names the tip; the first event of a decision
reads the user's active tips from the table, so the decision's other tips
come with it, and the tip's own row says whether it is still active (a
reaction may have closed it already).
Reactions landed elsewhere reach it with their reward (``Learner._on_reward``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from kernel.bus import Bus, Delivery, stream_of, subject_of
from kernel.consumers import event_user
from kernel.db import Database
from services.recommender import domain
from services.recommender.history import HistoryKeeper
from tips.recommender.v1 import events_pb2

log = logging.getLogger(__name__)

# Decisions replayed from before this process started: the history it loaded
# from the table at start may have missed those still being committed.
FOLLOW_WINDOW_S = 60.0


class PeerDecisions:
    """Folds other replicas' ``TipDecided`` into the history."""

    def __init__(self, db: Database, history: HistoryKeeper) -> None:
        self.db = db
        self.history = history

    async def run(self, bus: Bus) -> None:
        start = datetime.now(UTC) - timedelta(seconds=FOLLOW_WINDOW_S)
        await bus.follow(
            stream=stream_of(events_pb2.TipDecided),
            subjects=[subject_of(events_pb2.TipDecided)],
            message_type=events_pb2.TipDecided,
            handler=self.on_decided,
            start_time=start,
            # This replica's own decisions come back too: skipped unparsed (the
            # event id, its Nats-Msg-Id, is the tip's name).
            passed_over=self.history.decided_here,
        )

    async def on_decided(self, delivery: Delivery[events_pb2.TipDecided]) -> None:
        event = delivery.message
        user_id = event_user(delivery)
        found = domain.TIP.match(event.tip)
        if user_id is None or found is None or found[0] != user_id:
            return
        if self.history.decided_here(event.tip) or self.history.is_active(user_id, event.tip):
            return  # ours (recorded at commit), or brought with another tip of its decision
        # The whole decision at once, with the user's other active tips: a
        # screen must never show part of an answer of several tips (one event
        # each, arriving one by one). Erased meanwhile: nothing is found.
        await self.history.load_active(self.db, user_id, datetime.now(UTC), also=found[1])

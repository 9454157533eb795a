"""The training/evaluation log: ``TipDecided`` joined with ``RewardAssigned``.

Both events upsert the same row (keyed by the decision ``users/{u}/tips/{t}``),
so the join holds whichever arrives first; a row is usable once it has both
(``decided`` and a reward). Each handler claims the message id first in its
transaction (``kernel.outbox.claim``), so redeliveries change nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Awaitable
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.bus import Bus, Delivery
from kernel.consumers import consume_forever, event_user
from kernel.db import Database
from kernel.outbox import claim
from kernel.timestamps import to_datetime
from services.ml_pipelines import store
from services.ml_pipelines.offline import LoggedRow
from tips.recommender.v1 import events_pb2 as rec_events

log = logging.getLogger(__name__)
T = store.logged_decisions


def _tip_id(name: str) -> str:
    return name.removeprefix("catalogTips/")


def _finite(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else value


class LogConsumer:
    """Durable consumers of the recommender's decisions and rewards."""

    def __init__(self, db: Database, decisions_durable: str, rewards_durable: str) -> None:
        self.db = db
        self.decisions_durable = decisions_durable
        self.rewards_durable = rewards_durable

    async def on_decided(self, delivery: Delivery[rec_events.TipDecided]) -> None:
        e = delivery.message
        user_id = event_user(delivery)
        if user_id is None:
            return
        values = {
            "user_id": user_id,
            "decided": True,
            "decide_time": to_datetime(e.occur_time),
            "catalog_tip": _tip_id(e.catalog_tip),
            "propensity": e.propensity,
            "candidates": [[_tip_id(c.catalog_tip), c.score, c.probability] for c in e.candidates],
            "context": {f.name: _finite(f.value) for f in e.context_features},
            "feature_schema_version": e.feature_schema_version,
            "model_version": e.model_version,
            "policy_name": e.policy_name,
            # A later pick of a multi-tip answer has a conditional propensity.
            "rank": e.rank,
        }
        msg_id = delivery.msg_id or e.event_id
        async with self.db.transaction() as session:
            if not await claim(
                session, store.processed_messages, consumer=self.decisions_durable, msg_id=msg_id
            ) or await is_erased(session, user_id):
                return
            await session.execute(
                insert(T)
                .values(tip=e.tip, **values)
                .on_conflict_do_update(index_elements=[T.c.tip], set_=values)
            )

    async def on_reward(self, delivery: Delivery[rec_events.RewardAssigned]) -> None:
        e = delivery.message
        user_id = event_user(delivery)
        if user_id is None:
            return
        reward = {
            "reward": e.reward,
            "reward_source": int(e.source),
            "reward_time": to_datetime(e.occur_time),
        }
        msg_id = delivery.msg_id or e.event_id
        async with self.db.transaction() as session:
            if not await claim(
                session, store.processed_messages, consumer=self.rewards_durable, msg_id=msg_id
            ) or await is_erased(session, user_id):
                return
            # The first reward of a decision stands (the recommender sends one).
            await session.execute(
                insert(T)
                .values(
                    tip=e.tip,
                    user_id=user_id,
                    catalog_tip=_tip_id(e.catalog_tip),
                    decide_time=to_datetime(e.decide_time),
                    propensity=e.propensity,
                    model_version=e.model_version,
                    **reward,
                )
                .on_conflict_do_update(
                    index_elements=[T.c.tip], set_=reward, where=T.c.reward.is_(None)
                )
            )

    def tasks(self, bus: Bus) -> list[Awaitable[None]]:
        """The two consumer loops (they wait for TIPS_RECOMMENDER to exist)."""
        return [
            consume_forever(
                bus, rec_events.TipDecided, durable=self.decisions_durable, handler=self.on_decided
            ),
            consume_forever(
                bus, rec_events.RewardAssigned, durable=self.rewards_durable, handler=self.on_reward
            ),
        ]


def user_hash(user_id: str) -> str:
    return hashlib.sha256(user_id.encode()).hexdigest()


async def is_erased(session: AsyncSession, user_id: str) -> bool:
    E = store.erased_users
    found = await session.execute(select(E.c.user_hash).where(E.c.user_hash == user_hash(user_id)))
    return found.first() is not None


async def purge_user(session: AsyncSession, user_id: str) -> int:
    """Deletes the user's logged decisions and daily features, and remembers the erasure."""
    await session.execute(
        insert(store.erased_users).values(user_hash=user_hash(user_id)).on_conflict_do_nothing()
    )
    a = await session.execute(delete(T).where(T.c.user_id == user_id))
    f = store.user_daily_features
    b = await session.execute(delete(f).where(f.c.user_id == user_id))
    return int(getattr(a, "rowcount", 0) or 0) + int(getattr(b, "rowcount", 0) or 0)


async def load_rows(
    session: AsyncSession, start: datetime, end: datetime, limit: int
) -> list[LoggedRow]:
    """Joined decisions with ``start <= decide_time < end``, oldest first."""
    result = await session.execute(
        select(T)
        .where(
            T.c.decided, T.c.reward.is_not(None), T.c.decide_time >= start, T.c.decide_time < end
        )
        .order_by(T.c.decide_time, T.c.tip)
        .limit(limit)
    )
    out = []
    for row in result:
        candidates = row.candidates or []
        context = row.context if isinstance(row.context, dict) else json.loads(row.context or "{}")
        out.append(
            LoggedRow(
                tip=row.tip,
                user_id=row.user_id,
                decide_time=row.decide_time,
                action=row.catalog_tip,
                propensity=float(row.propensity or 0.0),
                candidates=tuple(str(c[0]) for c in candidates),
                context=context,
                reward=float(row.reward),
                model_version=row.model_version,
                rank=row.rank,
            )
        )
    return out

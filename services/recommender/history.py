"""Each user's recent decisions, active tips, done tips and category affinities, in memory.

Eligibility (cooldowns, per-day limits, the daily cap, done today) and the
policy's ``affinity_<category>`` features read it on every decision, and
``ListTips`` answers from the active tips (decided, neither reacted to nor
expired), so it lives in memory: updated after each commit that changes it,
and rebuilt from the ``tips`` table on start (the last two days of
decisions, the active tips, thirty days of rewards).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import and_, or_, select

from kernel.db import Database
from kernel.timestamps import to_datetime
from services.recommender.eligibility import History
from services.recommender.store import tip_from_row, tips
from tips.events.v1 import signal_pb2
from tips.recommender.v1 import tip_pb2

KEEP = timedelta(days=2)
AFFINITY_DAYS = 30
# Smoothing of the done-rate per category: two pseudo-observations at 0.5.
PRIOR_N, PRIOR_MEAN = 2.0, 0.5
# Active tips kept per user: more come only from explicit DecideTips calls;
# older ones stay active in the table and are rewarded when they expire.
MAX_ACTIVE = 20
# Tip names this process decided, remembered so a replica's feed of TipDecided
# skips its own (core/peers.py): more than a few minutes of decisions.
MAX_MINE = 100_000


class HistoryKeeper:
    """User id -> History and per-category reward sums."""

    def __init__(self) -> None:
        self._users: dict[str, History] = {}
        self._affinity: dict[str, dict[str, tuple[float, float]]] = {}
        # User id -> active tips, newest decision first, best first within one.
        self._active: dict[str, list[tip_pb2.Tip]] = {}
        self._mine: dict[str, None] = {}  # insertion-ordered: the oldest go first
        # A tip's state only moves on (ACTIVE, then reacted or expired): tips closed
        # here, and users erased here (with when), never come back from a table
        # read or an event that raced the commit which closed or erased them.
        self._closed: dict[str, None] = {}
        self._erased: dict[str, datetime] = {}

    def forget(self, user_id: str) -> None:
        """Drop an erased user's history, active tips and affinities."""
        self._users.pop(user_id, None)
        self._affinity.pop(user_id, None)
        for tip in self._active.pop(user_id, ()):
            self._remember_closed(tip.name)
        self._erased[user_id] = datetime.now(UTC)
        while len(self._erased) > MAX_MINE:
            del self._erased[next(iter(self._erased))]

    def _remember_closed(self, tip_name: str) -> None:
        self._closed[tip_name] = None
        while len(self._closed) > MAX_MINE:
            del self._closed[next(iter(self._closed))]

    def active(self, user_id: str, now: datetime) -> list[tip_pb2.Tip]:
        """The user's tips neither reacted to nor expired at ``now``, newest decision first."""
        tips_now = self._active.get(user_id)
        if not tips_now:
            return []
        seconds = now.timestamp()
        live = [t for t in tips_now if _seconds(t.expire_time) > seconds]
        if len(live) != len(tips_now):
            if live:
                self._active[user_id] = live
            else:
                del self._active[user_id]
        return live

    def record_active(self, user_id: str, decided: list[tip_pb2.Tip]) -> None:
        """A decision's tips (best first), committed: active until reacted to or expired."""
        if decided:
            self._active[user_id] = [*decided, *self._active.get(user_id, ())][:MAX_ACTIVE]
            for tip in decided:
                self._mine[tip.name] = None
            while len(self._mine) > MAX_MINE:
                del self._mine[next(iter(self._mine))]

    def decided_here(self, tip_name: str) -> bool:
        """Whether this process decided ``tip_name`` (recently)."""
        return tip_name in self._mine

    def record_peer_decision(self, user_id: str, tip: tip_pb2.Tip) -> None:
        """Another replica's decision: counts for eligibility, and is active if ``tip`` is."""
        at = to_datetime(tip.decide_time)
        erased = self._erased.get(user_id)
        if erased is not None and at <= erased:
            return  # decided before the user's erasure, read before its purge committed
        if at not in self.get(user_id).decided.get(_id(tip.catalog_tip), ()):
            self.record_decision(user_id, _id(tip.catalog_tip), at)  # not loaded at start
        if tip.state != tip_pb2.TIP_STATE_ACTIVE or tip.name in self._closed:
            return
        listed = [t for t in self._active.get(user_id, ()) if t.name != tip.name]
        listed.append(tip)
        listed.sort(key=lambda t: _seconds(t.decide_time), reverse=True)  # stable: ranks kept
        self._active[user_id] = listed[:MAX_ACTIVE]

    def close(self, user_id: str, tip_name: str) -> None:
        """The tip was reacted to: no longer active."""
        self._remember_closed(tip_name)
        tips_now = self._active.get(user_id)
        if tips_now:
            self._active[user_id] = [t for t in tips_now if t.name != tip_name]

    def is_active(self, user_id: str, tip_name: str) -> bool:
        return any(t.name == tip_name for t in self._active.get(user_id, ()))

    async def load_active(
        self, db: Database, user_id: str, now: datetime, also: str | None = None
    ) -> list[tip_pb2.Tip]:
        """The user's active tips as the table has them (another replica's decision
        that its feed has not brought yet, or brought in part: a decision's tips
        arrive as one event each), and the tip ``also`` (its id) whatever its
        state, recorded here; the active ones, newest decision first."""
        active = and_(tips.c.state == int(tip_pb2.TIP_STATE_ACTIVE), tips.c.expire_time > now)
        wanted = active if also is None else or_(active, tips.c.tip_id == also)
        async with db.session() as session:
            rows = (
                await session.execute(
                    select(tips)
                    .where(tips.c.user_id == user_id, wanted)
                    .order_by(tips.c.decide_time.desc(), tips.c.rank)
                    .limit(MAX_ACTIVE + 1)
                )
            ).all()
        for row in rows:  # appended in order, sorted by decision: best first within one
            self.record_peer_decision(user_id, tip_from_row(row))
        return self.active(user_id, now)

    def get(self, user_id: str) -> History:
        history = self._users.get(user_id)
        if history is None:
            history = self._users[user_id] = History()
        return history

    def record_decision(self, user_id: str, catalog_id: str, at: datetime) -> None:
        times = self.get(user_id).decided.setdefault(catalog_id, [])
        times.append(at)
        horizon = at - KEEP
        while times and times[0] < horizon:
            times.pop(0)

    def record_done(self, user_id: str, catalog_id: str, at: datetime) -> None:
        done = self.get(user_id).done
        if catalog_id not in done or done[catalog_id] < at:
            done[catalog_id] = at

    def record_reward(self, user_id: str, category: str, reward: float) -> None:
        stats = self._affinity.setdefault(user_id, {})
        total, n = stats.get(category, (0.0, 0.0))
        stats[category] = (total + reward, n + 1.0)

    def affinity(self, user_id: str) -> dict[str, float]:
        """``affinity_<category>``: the smoothed mean reward of the user's tips there."""
        return {
            f"affinity_{c}": (total + PRIOR_N * PRIOR_MEAN) / (n + PRIOR_N)
            for c, (total, n) in self._affinity.get(user_id, {}).items()
        }

    async def load(self, db: Database) -> int:
        """Rebuild from the decision log; returns the number of decisions read."""
        now = datetime.now(UTC)
        async with db.session() as session:
            recent = (
                await session.execute(
                    select(tips.c.user_id, tips.c.catalog_tip, tips.c.decide_time)
                    .where(tips.c.decide_time > now - KEEP)
                    .order_by(tips.c.decide_time)
                )
            ).all()
            done = (
                await session.execute(
                    select(tips.c.user_id, tips.c.catalog_tip, tips.c.react_time).where(
                        tips.c.reaction == signal_pb2.TIP_REACTION_DONE,
                        tips.c.react_time > now - KEEP,
                    )
                )
            ).all()
            rewarded = (
                await session.execute(
                    select(tips.c.user_id, tips.c.category, tips.c.reward).where(
                        tips.c.reward.is_not(None),
                        tips.c.decide_time > now - timedelta(days=AFFINITY_DAYS),
                    )
                )
            ).all()
            active = (
                await session.execute(
                    select(tips)
                    .where(
                        tips.c.state == int(tip_pb2.TIP_STATE_ACTIVE),
                        tips.c.expire_time > now,
                        tips.c.decide_time > now - KEEP,  # a tip expires within hours
                    )
                    .order_by(tips.c.decide_time.desc(), tips.c.rank)
                )
            ).all()
        self._users, self._affinity, self._active = {}, {}, {}
        for row in active:
            listed = self._active.setdefault(row.user_id, [])
            if len(listed) < MAX_ACTIVE:
                listed.append(tip_from_row(row))
        for row in recent:
            self.record_decision(row.user_id, _id(row.catalog_tip), row.decide_time)
        for row in done:
            self.record_done(row.user_id, _id(row.catalog_tip), row.react_time)
        for row in rewarded:
            self.record_reward(row.user_id, row.category, float(row.reward))
        return len(recent)


def _seconds(stamp: Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


def _id(catalog_tip: str) -> str:
    return catalog_tip.removeprefix("catalogTips/")

"""Queries of the learning loop: rewards on decisions, policy snapshots, exports.

A decision gets exactly one reward: the first reaction, or the default
after the wait, whichever commits first (``reward IS NULL`` guards the
update). Each reward takes the next ``reward_seq``; a policy snapshot records
the sequence up to which every reward is folded in, and the ones folded in
above it (replicas fold each other's rewards as they arrive), so a restart
replays exactly the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    LargeBinary,
    Row,
    Select,
    Table,
    Text,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.recommender.store import metadata, tips
from tips.recommender.v1 import tip_pb2

policy_state = Table(
    "policy_state",
    metadata,
    Column("name", Text, primary_key=True),
    Column("state", LargeBinary, nullable=False),
    Column("reward_seq", BigInteger, nullable=False),
    Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # Rewards folded in above reward_seq (migration 0003).
    Column("applied_above", ARRAY(BigInteger), nullable=False, server_default="{}"),
    # The model version scoring, and the promotion the policy went on from (0004).
    Column("serving_version", Text, nullable=False, server_default=""),
    Column("promoted_version", Text, nullable=False, server_default=""),
    Column("promote_time", DateTime(timezone=True), nullable=True),
)
policy_exports = Table(
    "policy_exports",
    metadata,
    Column("request_id", Text, primary_key=True),
    Column("model_version", Text, nullable=False),
    Column("artifact_uri", Text, nullable=False),
    Column("base_model_version", Text, nullable=False),
    Column("online_update_count", BigInteger, nullable=False),
    Column("export_time", DateTime(timezone=True), nullable=False),
)
_NEXT_SEQ = text("nextval('recommender.reward_seq')")
_REWARDED = (
    tips.c.user_id,
    tips.c.tip_id,
    tips.c.catalog_tip,
    tips.c.category,
    tips.c.row,
    tips.c.reward,
    tips.c.reward_seq,
    tips.c.propensity,
    tips.c.decide_time,
    tips.c.model_version,
    tips.c.reward_time,
)


@dataclass(frozen=True)
class Rewarded:
    """A decision that just got its reward."""

    user_id: str
    tip_id: str
    catalog_tip: str
    category: str
    row: bytes | None
    reward: float
    seq: int
    propensity: float
    decide_time: datetime
    model_version: str
    reward_time: datetime


def _rewarded(row: Any) -> Rewarded:
    return Rewarded(
        row.user_id, row.tip_id, row.catalog_tip, row.category, row.row, float(row.reward),
        int(row.reward_seq), float(row.propensity), row.decide_time, row.model_version,
        row.reward_time,
    )  # fmt: skip


async def assign(
    session: AsyncSession, user_id: str, tip_id: str, reward: float, source: int, at: datetime
) -> Rewarded | None:
    """Give a decision its reward; None when it already has one (or does not exist)."""
    result = await session.execute(
        update(tips)
        .where(tips.c.user_id == user_id, tips.c.tip_id == tip_id, tips.c.reward.is_(None))
        .values(reward=reward, reward_source=source, reward_time=at, reward_seq=_NEXT_SEQ)
        .returning(*_REWARDED)
    )
    row = result.first()
    return None if row is None else _rewarded(row)


async def expire_waiting(
    session: AsyncSession, before: datetime, reward: float, source: int, at: datetime, limit: int
) -> list[Rewarded]:
    """Default reward for decisions still unrewarded since ``before``; ACTIVE ones expire."""
    waiting = (
        select(tips.c.user_id, tips.c.tip_id)
        .where(tips.c.reward.is_(None), tips.c.decide_time < before)
        .order_by(tips.c.decide_time)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("waiting")
    )
    active = int(tip_pb2.TIP_STATE_ACTIVE)
    result = await session.execute(
        update(tips)
        .where(tips.c.user_id == waiting.c.user_id, tips.c.tip_id == waiting.c.tip_id)
        .values(
            reward=reward,
            reward_source=source,
            reward_time=at,
            reward_seq=_NEXT_SEQ,
            state=func.coalesce(func.nullif(tips.c.state, active), int(tip_pb2.TIP_STATE_EXPIRED)),
        )
        .returning(*_REWARDED)
    )
    return sorted((_rewarded(r) for r in result.all()), key=lambda r: r.seq)


async def rewards_after(session: AsyncSession, seq: int) -> Sequence[Rewarded]:
    rows = (
        await session.execute(
            select(*_REWARDED).where(tips.c.reward_seq > seq).order_by(tips.c.reward_seq)
        )
    ).all()
    return [_rewarded(r) for r in rows]


@dataclass(frozen=True)
class Snapshot:
    """Policy statistics with every reward up to ``seq`` folded in, and ``above``;
    the version ``serving`` (its number) and the promotion gone on from."""

    state: bytes
    seq: int
    above: frozenset[int]
    serving: str = ""
    promoted: str = ""
    promote_time: datetime | None = None


async def load_snapshot(session: AsyncSession, name: str) -> Snapshot | None:
    row = (
        await session.execute(
            select(
                policy_state.c.state,
                policy_state.c.reward_seq,
                policy_state.c.applied_above,
                policy_state.c.serving_version,
                policy_state.c.promoted_version,
                policy_state.c.promote_time,
            ).where(policy_state.c.name == name)
        )
    ).first()
    if row is None:
        return None
    return Snapshot(
        bytes(row.state),
        int(row.reward_seq),
        frozenset(row.applied_above),
        row.serving_version,
        row.promoted_version,
        row.promote_time,
    )


async def save_snapshot(session: AsyncSession, name: str, snapshot: Snapshot) -> None:
    values = {
        "state": snapshot.state,
        "reward_seq": snapshot.seq,
        "applied_above": sorted(snapshot.above),
        "serving_version": snapshot.serving,
        "promoted_version": snapshot.promoted,
        "promote_time": snapshot.promote_time,
    }
    stmt = insert(policy_state).values(name=name, **values)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["name"], set_={**values, "update_time": func.now()}
        )
    )


async def reward_seqs_after(session: AsyncSession, seq: int) -> Sequence[tuple[int, datetime]]:
    """(sequence, reward time) of the rewards committed after ``seq``, in order."""
    rows = (
        await session.execute(
            select(tips.c.reward_seq, tips.c.reward_time)
            .where(tips.c.reward_seq > seq)
            .order_by(tips.c.reward_seq)
        )
    ).all()
    return [(int(r.reward_seq), r.reward_time) for r in rows]


def rewards_since_statement(since: datetime) -> Select[Any]:
    """The rewards assigned after ``since``, in sequence order (``ix_tips_reward_time``)."""
    return select(*_REWARDED).where(tips.c.reward_time > since).order_by(tips.c.reward_seq)


async def rewards_since(session: AsyncSession, since: datetime) -> Sequence[Rewarded]:
    """The rewards assigned after ``since``, in sequence order."""
    rows = (await session.execute(rewards_since_statement(since))).all()
    return [_rewarded(r) for r in rows]


async def rewards_with_seqs(session: AsyncSession, seqs: Sequence[int]) -> Sequence[Rewarded]:
    """The committed rewards among ``seqs``, in sequence order."""
    if not seqs:
        return []
    rows = (
        await session.execute(
            select(*_REWARDED).where(tips.c.reward_seq.in_(list(seqs))).order_by(tips.c.reward_seq)
        )
    ).all()
    return [_rewarded(r) for r in rows]


async def find_export(session: AsyncSession, request_id: str) -> Row[Any] | None:
    return (
        await session.execute(
            select(policy_exports).where(policy_exports.c.request_id == request_id)
        )
    ).first()


async def save_export(session: AsyncSession, **values: Any) -> None:
    await session.execute(insert(policy_exports).values(**values).on_conflict_do_nothing())

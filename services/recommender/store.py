"""The recommender's tables (schema ``recommender``) and queries.

``tips`` is the decision log the user sees as their tip history;
``user_context`` persists each user's folded context so the in-memory read
model is rebuilt on start; ``processed_messages`` makes the signal consumer
idempotent; the outbox carries ``TipDecided`` to ``TIPS_RECOMMENDER``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Row,
    Table,
    Text,
    false,
    func,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.outbox import outbox_table, processed_table
from kernel.timestamps import optional_timestamp, to_datetime
from services.recommender.domain import TIP, UserContext
from tips.events.v1 import signal_pb2
from tips.recommender.v1 import tip_pb2

SCHEMA = "recommender"
metadata = MetaData(schema=SCHEMA)

tips = Table(
    "tips",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("tip_id", Text, primary_key=True),
    Column("catalog_tip", Text, nullable=False),
    Column("title", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("category", Text, nullable=False),
    Column("explanation", Text, nullable=False),
    Column("effort", Integer, nullable=False),
    Column("minutes_needed", Integer, nullable=False),
    Column("state", Integer, nullable=False),
    Column("reaction", Integer, nullable=False, server_default="0"),
    Column("react_time", DateTime(timezone=True), nullable=True),
    Column("snooze_until", DateTime(timezone=True), nullable=True),
    Column("decide_time", DateTime(timezone=True), nullable=False),
    Column("expire_time", DateTime(timezone=True), nullable=False),
    Column("model_version", Text, nullable=False),
    # The logged decision (0002): what the policy saw and how likely its pick was.
    Column("catalog_version", Text, nullable=False, server_default=""),
    Column("policy_version", Text, nullable=False, server_default=""),
    Column("propensity", Float, nullable=False, server_default="1"),
    Column("explored", Boolean, nullable=False, server_default=false()),
    Column("rank", Integer, nullable=False, server_default="0"),
    Column("row", LargeBinary, nullable=True),  # the scored feature row, float64
    Column("context", JSONB, nullable=True),  # named context features
    Column("candidates", JSONB, nullable=True),  # catalog id -> [score, probability]
    # Its reward, once a reaction or the wait assigned it (exactly once).
    Column("reward", Float, nullable=True),
    Column("reward_source", Integer, nullable=True),
    Column("reward_time", DateTime(timezone=True), nullable=True),
    Column("reward_seq", BigInteger, nullable=True),
    Index("ix_tips_user_decide", "user_id", "decide_time"),
)

user_context = Table(
    "user_context",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("context", JSONB, nullable=False),
    Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # Bumped by every change; each change is NOTIFYed to every replica (0005).
    Column("version", BigInteger, nullable=False, server_default="1"),
)

outbox = outbox_table(metadata)
processed = processed_table(metadata)

S = tip_pb2.TipState


def tip_name(user_id: str, tip_id: str) -> str:
    return TIP.format(user_id, tip_id)


def tip_from_row(row: Row[Any]) -> tip_pb2.Tip:
    return tip_pb2.Tip(
        name=tip_name(row.user_id, row.tip_id),
        catalog_tip=row.catalog_tip,
        title=row.title,
        body=row.body,
        category=row.category,
        explanation=row.explanation,
        effort=row.effort,
        minutes_needed=row.minutes_needed,
        state=row.state,
        reaction=row.reaction,
        react_time=optional_timestamp(row.react_time),
        snooze_until=optional_timestamp(row.snooze_until),
        decide_time=optional_timestamp(row.decide_time),
        expire_time=optional_timestamp(row.expire_time),
        model_version=row.model_version,
    )


async def insert_tip(session: AsyncSession, user_id: str, tip_id: str, tip: tip_pb2.Tip) -> None:
    await session.execute(
        insert(tips).values(
            user_id=user_id,
            tip_id=tip_id,
            catalog_tip=tip.catalog_tip,
            title=tip.title,
            body=tip.body,
            category=tip.category,
            explanation=tip.explanation,
            effort=int(tip.effort),
            minutes_needed=tip.minutes_needed,
            state=int(tip.state),
            reaction=int(tip.reaction),
            decide_time=to_datetime(tip.decide_time),
            expire_time=to_datetime(tip.expire_time),
            model_version=tip.model_version,
        )
    )


async def get_tip(session: AsyncSession, user_id: str, tip_id: str) -> tip_pb2.Tip | None:
    row = (
        await session.execute(
            select(tips).where(tips.c.user_id == user_id, tips.c.tip_id == tip_id)
        )
    ).first()
    return None if row is None else tip_from_row(row)


async def list_tips(
    session: AsyncSession,
    user_id: str,
    *,
    limit: int,
    states: Iterable[int] = (),
    after: tuple[datetime, str] | None = None,
) -> tuple[list[tip_pb2.Tip], tuple[datetime, str] | None]:
    """Newest decision first; one page and the cursor of its last row (None: last page)."""
    stmt = select(tips).where(tips.c.user_id == user_id)
    states = list(states)
    if states:
        stmt = stmt.where(tips.c.state.in_(states))
    if after is not None:
        stmt = stmt.where(tuple_(tips.c.decide_time, tips.c.tip_id) < after)
    stmt = stmt.order_by(tips.c.decide_time.desc(), tips.c.tip_id.desc()).limit(limit + 1)
    rows = (await session.execute(stmt)).all()
    page = rows[:limit]
    cursor = (page[-1].decide_time, page[-1].tip_id) if len(rows) > limit else None
    return [tip_from_row(r) for r in page], cursor


R = signal_pb2.TipReaction
STATE_OF_REACTION: dict[int, int] = {
    R.TIP_REACTION_DONE: S.TIP_STATE_DONE,
    R.TIP_REACTION_SNOOZE: S.TIP_STATE_SNOOZED,
    R.TIP_REACTION_DISMISS: S.TIP_STATE_DISMISSED,
}


async def apply_reaction(
    session: AsyncSession,
    user_id: str,
    tip_id: str,
    *,
    reaction: int,
    react_time: datetime,
    snooze_until: datetime | None,
) -> str | None:
    """Land a reaction on a tip; the tip's catalog id, or None if there is no such tip.

    Idempotent and order-safe: an older reaction (a late redelivery) never
    replaces a newer one.
    """
    result = await session.execute(
        update(tips)
        .where(
            tips.c.user_id == user_id,
            tips.c.tip_id == tip_id,
            or_(tips.c.react_time.is_(None), tips.c.react_time <= react_time),
        )
        .values(
            state=STATE_OF_REACTION[reaction],
            reaction=reaction,
            react_time=react_time,
            snooze_until=snooze_until,
        )
        .returning(tips.c.catalog_tip)
    )
    catalog = result.scalar()
    if catalog is not None:
        return str(catalog)
    existing = await session.execute(
        select(tips.c.catalog_tip).where(tips.c.user_id == user_id, tips.c.tip_id == tip_id)
    )
    found = existing.scalar()
    return None if found is None else str(found)


CONTEXT_CHANNEL = "recommender_context"  # NOTIFY "<user_id> <version>" (migration 0005)


async def save_context(session: AsyncSession, ctx: UserContext, version: int) -> int | None:
    """Store ``ctx`` over stored ``version`` (0: none stored); the new version, or
    None when the stored one is not ``version`` (another replica changed it)."""
    returning = user_context.c.version
    if version == 0:
        created = insert(user_context).values(user_id=ctx.user_id, context=ctx.to_json(), version=1)
        result = await session.execute(
            created.on_conflict_do_nothing(index_elements=["user_id"]).returning(returning)
        )
    else:
        result = await session.execute(
            update(user_context)
            .where(user_context.c.user_id == ctx.user_id, user_context.c.version == version)
            .values(context=ctx.to_json(), version=version + 1, update_time=func.now())
            .returning(returning)
        )
    saved = result.scalar()
    return None if saved is None else int(saved)


async def lock_context(session: AsyncSession, user_id: str) -> tuple[UserContext, int]:
    """The stored context and its version, locked until the transaction ends."""
    row = (
        await session.execute(
            select(user_context.c.context, user_context.c.version)
            .where(user_context.c.user_id == user_id)
            .with_for_update()
        )
    ).first()
    if row is None:
        return UserContext(user_id=user_id), 0
    return UserContext.from_json(user_id, row.context), int(row.version)


async def load_contexts(
    session: AsyncSession,
    user_ids: Sequence[str] | None = None,
    changed_since: datetime | None = None,
) -> dict[str, tuple[UserContext, int]]:
    """Stored contexts with their versions: every user's, ``user_ids``', or those
    changed since ``changed_since``."""
    query = select(user_context.c.user_id, user_context.c.context, user_context.c.version)
    if user_ids is not None:
        query = query.where(user_context.c.user_id.in_(list(user_ids)))
    if changed_since is not None:
        query = query.where(user_context.c.update_time >= changed_since)
    rows = (await session.execute(query)).all()
    return {r.user_id: (UserContext.from_json(r.user_id, r.context), int(r.version)) for r in rows}

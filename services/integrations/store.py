"""The integrations service's tables (schema ``integrations``) and queries.

- ``connections``: a user's link to a provider, its cursor and sync status;
  ``lease_until`` marks a sync in progress (claimed FOR UPDATE SKIP LOCKED,
  so replicas never run the same connection twice at once);
- ``tokens``: the grant's tokens, sealed (``vault``): KEK id, wrapped data
  key and ciphertext; no token is ever stored in clear;
- ``oauth_states``: started authorizations, keyed by the SHA-256 of the
  state, with the PKCE verifier sealed;
- ``outbox`` / ``processed_messages``: events out, idempotent consumption in.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Row,
    Table,
    Text,
    and_,
    delete,
    func,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.outbox import outbox_table, processed_table
from services.integrations.vault import Envelope
from tips.integrations.v1 import connection_pb2

SCHEMA = "integrations"
S = connection_pb2.ConnectionState


def define(metadata: MetaData) -> tuple[Table, Table, Table]:
    """The service's own tables in ``metadata`` (the migration builds its own copy)."""
    connections = Table(
        "connections",
        metadata,
        Column("user_id", Text, primary_key=True),
        Column("connection_id", Text, primary_key=True),
        Column("provider", Text, nullable=False),
        Column("display_name", Text, nullable=False, server_default=""),
        # PENDING_AUTHORIZATION, ACTIVE, ERROR or REVOKED; PAUSED is derived from `paused`.
        Column("state", Integer, nullable=False),
        Column("paused", Boolean, nullable=False, server_default="false"),
        Column("sync_interval_seconds", Integer, nullable=True),
        Column("account_label", Text, nullable=False, server_default=""),
        Column("granted_scopes", JSONB, nullable=False, server_default="[]"),
        Column("consent_purpose", Text, nullable=False),
        Column("cursor", JSONB, nullable=False, server_default="{}"),
        Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("authorize_time", DateTime(timezone=True), nullable=True),
        Column("last_attempt_time", DateTime(timezone=True), nullable=True),
        Column("last_success_time", DateTime(timezone=True), nullable=True),
        Column("last_error_code", Integer, nullable=True),
        Column("last_error_message", Text, nullable=True),
        Column("last_error_time", DateTime(timezone=True), nullable=True),
        Column("next_run_time", DateTime(timezone=True), nullable=True),
        Column("records_synced", BigInteger, nullable=False, server_default="0"),
        Column("signals_emitted", BigInteger, nullable=False, server_default="0"),
        Column("consecutive_failures", Integer, nullable=False, server_default="0"),
        # Set while a sync runs; a lapsed lease (crashed worker) is claimable again.
        Column("lease_until", DateTime(timezone=True), nullable=True),
        # The next run's id, trigger and resync flag, set by SyncConnection / authorization.
        Column("pending_sync_id", Text, nullable=True),
        Column("pending_trigger", Integer, nullable=True),
        Column("pending_full_resync", Boolean, nullable=False, server_default="false"),
        Index("ix_connections_user_create", "user_id", "create_time", "connection_id"),
        Index(
            "ix_connections_due",
            "provider",
            "next_run_time",
            postgresql_where=text("state IN (2, 4) AND NOT paused"),
        ),
    )
    tokens = Table(
        "tokens",
        metadata,
        Column("user_id", Text, primary_key=True),
        Column("connection_id", Text, primary_key=True),
        Column("key_id", Text, nullable=False),
        Column("wrapped_key", LargeBinary, nullable=False),
        Column("ciphertext", LargeBinary, nullable=False),
        # When the access token expires (not secret): drives refresh before expiry.
        Column("expire_time", DateTime(timezone=True), nullable=True),
        Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
        ForeignKeyConstraint(
            ["user_id", "connection_id"],
            ["connections.user_id", "connections.connection_id"],
            ondelete="CASCADE",
        ),
    )
    states = Table(
        "oauth_states",
        metadata,
        Column("state_hash", Text, primary_key=True),
        Column("user_id", Text, nullable=False),
        Column("connection_id", Text, nullable=False),
        Column("key_id", Text, nullable=False),
        Column("wrapped_key", LargeBinary, nullable=False),
        Column("ciphertext", LargeBinary, nullable=False),
        Column("return_uri", Text, nullable=False),
        Column("expire_time", DateTime(timezone=True), nullable=False),
        ForeignKeyConstraint(
            ["user_id", "connection_id"],
            ["connections.user_id", "connections.connection_id"],
            ondelete="CASCADE",
        ),
    )
    return connections, tokens, states


metadata = MetaData(schema=SCHEMA)
connections, tokens, oauth_states = define(metadata)
# Events waiting to be published (transactional outbox).
outbox = outbox_table(metadata)
# Bus messages already handled, for idempotent consumers.
processed_messages = processed_table(metadata)

c = connections.c
SCHEDULABLE = (S.CONNECTION_STATE_ACTIVE, S.CONNECTION_STATE_ERROR)


def _key(user_id: str, connection_id: str) -> Any:
    return and_(c.user_id == user_id, c.connection_id == connection_id)


async def get_connection(
    session: AsyncSession, user_id: str, connection_id: str, *, lock: bool = False
) -> Row[Any] | None:
    query = select(connections).where(_key(user_id, connection_id))
    if lock:
        query = query.with_for_update()
    return (await session.execute(query)).first()


async def insert_connection(session: AsyncSession, **values: Any) -> None:
    await session.execute(insert(connections).values(**values))


async def update_connection(
    session: AsyncSession, user_id: str, connection_id: str, **values: Any
) -> Row[Any] | None:
    values.setdefault("update_time", func.now())
    result = await session.execute(
        update(connections)
        .where(_key(user_id, connection_id))
        .values(**values)
        .returning(*connections.c)
    )
    return result.first()


async def delete_connection(session: AsyncSession, user_id: str, connection_id: str) -> None:
    # Tokens and pending states go with it (ON DELETE CASCADE), in this transaction.
    await session.execute(delete(connections).where(_key(user_id, connection_id)))


async def list_connections(
    session: AsyncSession,
    user_id: str,
    *,
    provider: str | None,
    states: Sequence[int],
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[Row[Any]]:
    query = select(connections).where(c.user_id == user_id)
    if provider:
        query = query.where(c.provider == provider)
    if states:
        base = [s for s in states if s != S.CONNECTION_STATE_PAUSED]
        conds = [and_(c.state.in_(base), ~(c.paused & c.state.in_(SCHEDULABLE)))]
        if S.CONNECTION_STATE_PAUSED in states:
            conds.append(and_(c.paused, c.state.in_(SCHEDULABLE)))
        query = query.where(or_(*conds))
    if after is not None:
        query = query.where(tuple_(c.create_time, c.connection_id) > tuple_(*after))
    query = query.order_by(c.create_time, c.connection_id).limit(limit)
    return list((await session.execute(query)).all())


async def connections_with_purpose(
    session: AsyncSession, user_id: str, purpose: str
) -> list[Row[Any]]:
    query = select(connections).where(c.user_id == user_id, c.consent_purpose == purpose)
    return list((await session.execute(query)).all())


# --- scheduling ----------------------------------------------------------------------------


async def claim_due(
    session: AsyncSession, provider: str, limit: int, lease_seconds: int
) -> list[Row[Any]]:
    """Lease up to ``limit`` due connections of ``provider``; other replicas skip them."""
    now = func.now()
    due = (
        select(c.user_id, c.connection_id)
        .where(
            c.provider == provider,
            c.state.in_(SCHEDULABLE),
            ~c.paused,
            c.next_run_time <= now,
            or_(c.lease_until.is_(None), c.lease_until < now),
        )
        .order_by(c.next_run_time)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("due")
    )
    result = await session.execute(
        update(connections)
        .where(tuple_(c.user_id, c.connection_id).in_(select(due.c.user_id, due.c.connection_id)))
        .values(lease_until=now + func.make_interval(0, 0, 0, 0, 0, 0, lease_seconds))
        .returning(*connections.c)
    )
    return list(result.all())


async def list_due(
    session: AsyncSession,
    due: datetime,
    provider: str | None,
    after: Any,
    limit: int,
) -> list[Row[Any]]:
    """Schedulable connections with next_run_time <= due, earliest first (keyset paged)."""
    query = select(connections).where(c.state.in_(SCHEDULABLE), ~c.paused, c.next_run_time <= due)
    if provider:
        query = query.where(c.provider == provider)
    if after is not None:
        user_id, connection_id = after.id.split("/", 1)
        query = query.where(
            tuple_(c.next_run_time, c.user_id, c.connection_id)
            > tuple_(after.time, user_id, connection_id)
        )
    query = query.order_by(c.next_run_time, c.user_id, c.connection_id).limit(limit)
    return list((await session.execute(query)).all())


async def claim_one(
    session: AsyncSession, user_id: str, connection_id: str, lease_seconds: int
) -> Row[Any] | None:
    """Lease one connection unless a sync of it is running."""
    now = func.now()
    result = await session.execute(
        update(connections)
        .where(_key(user_id, connection_id), or_(c.lease_until.is_(None), c.lease_until < now))
        .values(lease_until=now + func.make_interval(0, 0, 0, 0, 0, 0, lease_seconds))
        .returning(*connections.c)
    )
    return result.first()


# --- tokens and states --------------------------------------------------------------------


def envelope_of(row: Row[Any]) -> Envelope:
    return Envelope(row.key_id, bytes(row.wrapped_key), bytes(row.ciphertext))


async def get_tokens(session: AsyncSession, user_id: str, connection_id: str) -> Row[Any] | None:
    t = tokens.c
    query = select(tokens).where(t.user_id == user_id, t.connection_id == connection_id)
    return (await session.execute(query)).first()


async def put_tokens(
    session: AsyncSession,
    user_id: str,
    connection_id: str,
    envelope: Envelope,
    expire_time: datetime | None,
) -> None:
    values = {
        "key_id": envelope.key_id,
        "wrapped_key": envelope.wrapped_key,
        "ciphertext": envelope.ciphertext,
        "expire_time": expire_time,
        "update_time": func.now(),
    }
    await session.execute(
        insert(tokens)
        .values(user_id=user_id, connection_id=connection_id, **values)
        .on_conflict_do_update(index_elements=["user_id", "connection_id"], set_=values)
    )


async def put_state(session: AsyncSession, **values: Any) -> None:
    await session.execute(insert(oauth_states).values(**values))


async def take_state(session: AsyncSession, state_hash: str) -> Row[Any] | None:
    """Remove and return a started authorization: a state works once."""
    result = await session.execute(
        delete(oauth_states)
        .where(oauth_states.c.state_hash == state_hash)
        .returning(*oauth_states.c)
    )
    return result.first()


async def delete_expired_states(session: AsyncSession) -> None:
    await session.execute(delete(oauth_states).where(oauth_states.c.expire_time < func.now()))

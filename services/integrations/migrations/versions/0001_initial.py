"""Initial integrations schema: connections, sealed tokens, OAuth states, outbox.

Revision ID: integrations_0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op
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
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from kernel.outbox import outbox_table, processed_table

revision: str = "integrations_0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# A copy of store.py's tables as of this revision, so later changes to
# store.py cannot change what this revision did.
def _tables(metadata: MetaData) -> None:
    Table(
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
    Table(
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
    Table(
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


def upgrade() -> None:
    metadata = MetaData(schema="integrations")
    _tables(metadata)
    outbox_table(metadata)
    processed_table(metadata)
    metadata.create_all(op.get_bind())


def downgrade() -> None:
    for table in ("processed_messages", "outbox", "oauth_states", "tokens", "connections"):
        op.drop_table(table, schema="integrations")

"""Initial auth schema: users, identities, sessions, refresh tokens, signing
keys, used nonces, web sign-ins, failed sign-in counters, outbox, processed.

Revision ID: auth_0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

from kernel.outbox import outbox_table, processed_table

revision: str = "auth_0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = DateTime(timezone=True)
_TABLES = (
    "signin_failures",
    "web_signins",
    "used_nonces",
    "signing_keys",
    "refresh_tokens",
    "sessions",
    "identities",
    "users",
)


def _define(metadata: MetaData) -> None:
    """The tables as this revision created them (a frozen copy of store.define)."""
    users = Table(
        "users",
        metadata,
        Column("id", Text, primary_key=True),
        Column("create_time", TZ, nullable=False),
    )
    Table(
        "identities",
        metadata,
        Column("id", Text, primary_key=True),
        Column("user_id", Text, ForeignKey(users.c.id, ondelete="CASCADE"), nullable=False),
        Column("provider", SmallInteger, nullable=False),
        Column("subject", Text, nullable=False),
        Column("email", Text, nullable=False, server_default=""),
        Column("email_verified", Boolean, nullable=False, server_default="false"),
        Column("link_time", TZ, nullable=False),
        Column("last_sign_in_time", TZ, nullable=False),
        UniqueConstraint("provider", "subject", name="uq_identities_provider_subject"),
        Index("ix_identities_user", "user_id", "link_time"),
    )
    sessions = Table(
        "sessions",
        metadata,
        Column("id", Text, primary_key=True),
        Column("user_id", Text, ForeignKey(users.c.id, ondelete="CASCADE"), nullable=False),
        Column("identity_id", Text, nullable=False),
        Column("provider", SmallInteger, nullable=False),
        Column("device_name", Text, nullable=False, server_default=""),
        Column("user_agent", Text, nullable=False, server_default=""),
        Column("platform", SmallInteger, nullable=False, server_default="0"),
        Column("create_time", TZ, nullable=False),
        Column("last_use_time", TZ, nullable=False),
        Column("expire_time", TZ, nullable=False),
        Column("access_expire_time", TZ, nullable=False),
        Column("revoke_time", TZ, nullable=True),
        Column("revoke_reason", SmallInteger, nullable=False, server_default="0"),
        Index("ix_sessions_user_created", "user_id", "create_time"),
    )
    Table(
        "refresh_tokens",
        metadata,
        # SHA-256 of the token; the token itself is never stored.
        Column("token_hash", LargeBinary, primary_key=True),
        Column("session_id", Text, ForeignKey(sessions.c.id, ondelete="CASCADE"), nullable=False),
        Column("create_time", TZ, nullable=False),
        Column("expire_time", TZ, nullable=False),
        # Set when rotated: presenting it again is reuse.
        Column("spent_time", TZ, nullable=True),
        Index("ix_refresh_tokens_session", "session_id"),
    )
    Table(
        "signing_keys",
        metadata,
        Column("kid", Text, primary_key=True),
        Column("alg", Text, nullable=False),
        Column("public_jwk", JSONB, nullable=False),
        # AES-256-GCM(nonce || ciphertext) of the PEM private key; dropped
        # when the key is retired (it never signs again).
        Column("private_key", LargeBinary, nullable=True),
        Column("kek_id", Text, nullable=True),
        Column("create_time", TZ, nullable=False),
        # When it stopped being the current key; NULL while current.
        Column("retire_time", TZ, nullable=True),
        # When it leaves the JWK Set (retire_time + grace).
        Column("remove_time", TZ, nullable=True),
    )
    Table(
        "used_nonces",
        metadata,
        Column("nonce_hash", LargeBinary, primary_key=True),
        Column("expire_time", TZ, nullable=False),
        Index("ix_used_nonces_expire", "expire_time"),
    )
    Table(
        "web_signins",
        metadata,
        Column("state_hash", LargeBinary, primary_key=True),
        Column("provider", SmallInteger, nullable=False),
        Column("redirect_uri", Text, nullable=False),
        Column("device_name", Text, nullable=False, server_default=""),
        Column("user_agent", Text, nullable=False, server_default=""),
        Column("nonce", Text, nullable=False),
        Column("code_verifier", LargeBinary, nullable=False),
        Column("kek_id", Text, nullable=False),
        Column("expire_time", TZ, nullable=False),
        Index("ix_web_signins_expire", "expire_time"),
    )
    Table(
        "signin_failures",
        metadata,
        Column("client", Text, primary_key=True),
        Column("window_start", TZ, nullable=False),
        Column("failures", Integer, nullable=False),
    )


def upgrade() -> None:
    # Built from a MetaData of its own so later changes to store.py cannot
    # change what this revision did.
    metadata = MetaData(schema="auth")
    _define(metadata)
    outbox_table(metadata)
    processed_table(metadata)
    metadata.create_all(op.get_bind())


def downgrade() -> None:
    op.drop_table("processed_messages", schema="auth")
    op.drop_table("outbox", schema="auth")
    for name in _TABLES:
        op.drop_table(name, schema="auth")

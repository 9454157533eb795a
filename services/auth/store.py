"""The auth service's tables (schema ``auth``).

Secrets are never stored in the clear: refresh tokens and web sign-in
``state`` values only as SHA-256 hashes, signing keys and PKCE verifiers
sealed with AES-256-GCM (``services.auth.crypto.Envelope``), nonces hashed.
"""

from __future__ import annotations

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

SCHEMA = "auth"
TZ = DateTime(timezone=True)


def define(metadata: MetaData) -> dict[str, Table]:
    """Every table of the schema in ``metadata`` (the migration uses its own copy)."""
    users = Table(
        "users",
        metadata,
        Column("id", Text, primary_key=True),
        Column("create_time", TZ, nullable=False),
    )
    identities = Table(
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
    refresh_tokens = Table(
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
    signing_keys = Table(
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
    used_nonces = Table(
        "used_nonces",
        metadata,
        Column("nonce_hash", LargeBinary, primary_key=True),
        Column("expire_time", TZ, nullable=False),
        Index("ix_used_nonces_expire", "expire_time"),
    )
    web_signins = Table(
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
    signin_failures = Table(
        "signin_failures",
        metadata,
        Column("client", Text, primary_key=True),
        Column("window_start", TZ, nullable=False),
        Column("failures", Integer, nullable=False),
    )
    return {
        t.name: t
        for t in (
            users,
            identities,
            sessions,
            refresh_tokens,
            signing_keys,
            used_nonces,
            web_signins,
            signin_failures,
        )
    }


metadata = MetaData(schema=SCHEMA)
_tables = define(metadata)
users = _tables["users"]
identities = _tables["identities"]
sessions = _tables["sessions"]
refresh_tokens = _tables["refresh_tokens"]
signing_keys = _tables["signing_keys"]
used_nonces = _tables["used_nonces"]
web_signins = _tables["web_signins"]
signin_failures = _tables["signin_failures"]
# Events waiting to be published (transactional outbox).
outbox = outbox_table(metadata)
# Bus messages already handled, for idempotent consumers.
processed_messages = processed_table(metadata)

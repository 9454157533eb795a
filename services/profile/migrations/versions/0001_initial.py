"""Initial profile schema: profiles, consents, the consent history, erasures,
the outbox and processed-messages tables.

Revision ID: profile_0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from kernel.outbox import outbox_table, processed_table

revision: str = "profile_0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "profile"

# History is append-only: no UPDATE or TRUNCATE ever, DELETE only inside an
# erasure transaction (which sets tips.erasure = 'on' locally).
_APPEND_ONLY = """
CREATE FUNCTION profile.consent_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' AND current_setting('tips.erasure', true) = 'on' THEN
    RETURN OLD;
  END IF;
  RAISE EXCEPTION 'profile.consent_events is append-only (% refused)', TG_OP;
END;
$$
"""


def upgrade() -> None:
    # Explicit columns (not store.py's tables) so later store changes cannot
    # change what this revision did.
    op.create_table(
        "profiles",
        sa.Column("user_id", sa.Text, primary_key=True),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("seeded", sa.Boolean, nullable=False, server_default="false"),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )
    op.create_table(
        "consents",
        sa.Column("user_id", sa.Text, primary_key=True),
        sa.Column("purpose", sa.Integer, primary_key=True),
        sa.Column("state", sa.Integer, nullable=False),
        sa.Column("text_version", sa.Text, nullable=False, server_default=""),
        sa.Column("source", sa.Integer, nullable=False, server_default="0"),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=True),
        schema=SCHEMA,
    )
    op.create_table(
        "consent_events",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("purpose", sa.Integer, nullable=False),
        sa.Column("state", sa.Integer, nullable=False),
        sa.Column("previous_state", sa.Integer, nullable=False),
        sa.Column("text_version", sa.Text, nullable=False),
        sa.Column("source", sa.Integer, nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_consent_events_user_time",
        "consent_events",
        ["user_id", "create_time", "id"],
        schema=SCHEMA,
    )
    op.execute(_APPEND_ONLY)
    op.execute(
        "CREATE TRIGGER consent_events_no_update_delete BEFORE UPDATE OR DELETE "
        "ON profile.consent_events FOR EACH ROW "
        "EXECUTE FUNCTION profile.consent_events_append_only()"
    )
    op.execute(
        "CREATE TRIGGER consent_events_no_truncate BEFORE TRUNCATE "
        "ON profile.consent_events FOR EACH STATEMENT "
        "EXECUTE FUNCTION profile.consent_events_append_only()"
    )
    op.create_table(
        "erasures",
        sa.Column("user_id", sa.Text, primary_key=True),
        sa.Column("state", sa.Integer, nullable=False),
        sa.Column("request_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("complete_time", sa.DateTime(timezone=True), nullable=True),
        schema=SCHEMA,
    )
    metadata = sa.MetaData(schema=SCHEMA)
    outbox_table(metadata)
    processed_table(metadata)
    metadata.create_all(op.get_bind())


def downgrade() -> None:
    for table in ("processed_messages", "outbox", "erasures", "consent_events"):
        op.drop_table(table, schema=SCHEMA)
    op.execute("DROP FUNCTION IF EXISTS profile.consent_events_append_only()")
    op.drop_table("consents", schema=SCHEMA)
    op.drop_table("profiles", schema=SCHEMA)

"""recommender: each stored user context has a version, and every change of one
is announced on NOTIFY ``recommender_context`` (payload ``<user_id> <version>``;
version -1: deleted), so every replica keeps its in-memory contexts current and
a replica folding onto a stale copy notices (docs/decisions.md, 35).

Revision ID: recommender_0005
Revises: recommender_0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "recommender_0005"
down_revision = "recommender_0004"
branch_labels = None
depends_on = None

SCHEMA = "recommender"


def upgrade() -> None:
    op.add_column(
        "user_context",
        sa.Column("version", sa.BigInteger, nullable=False, server_default=sa.text("1")),
        schema=SCHEMA,
    )
    # Replicas catch up on the contexts changed since a time (a lost NOTIFY).
    op.create_index("user_context_update_time", "user_context", ["update_time"], schema=SCHEMA)
    op.execute(
        f"""
        CREATE FUNCTION {SCHEMA}.notify_context() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                PERFORM pg_notify('recommender_context', OLD.user_id || ' -1');
                RETURN OLD;
            END IF;
            PERFORM pg_notify('recommender_context', NEW.user_id || ' ' || NEW.version);
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        f"""
        CREATE TRIGGER user_context_changed
        AFTER INSERT OR UPDATE OR DELETE ON {SCHEMA}.user_context
        FOR EACH ROW EXECUTE FUNCTION {SCHEMA}.notify_context()
        """
    )


def downgrade() -> None:
    op.execute(f"DROP TRIGGER user_context_changed ON {SCHEMA}.user_context")
    op.execute(f"DROP FUNCTION {SCHEMA}.notify_context()")
    op.drop_index("user_context_update_time", table_name="user_context", schema=SCHEMA)
    op.drop_column("user_context", "version", schema=SCHEMA)

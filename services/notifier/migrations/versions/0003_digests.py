"""The daily digest: notification kind, the digest a tip is held for or carried by.

Revision ID: notifier_0003
Revises: notifier_0002
Create Date: 2026-12-10
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "notifier_0003"
down_revision: str | Sequence[str] | None = "notifier_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HELD = 6  # NOTIFICATION_STATE_HELD, fixed here so the contract cannot change this revision


def upgrade() -> None:
    # Existing rows are tips (kind 1) carried by no digest.
    op.add_column(
        "notifications",
        sa.Column("kind", sa.Integer, nullable=False, server_default="1"),
        schema="notifier",
    )
    op.add_column(
        "notifications",
        sa.Column("digest_id", sa.Text, nullable=False, server_default=""),
        schema="notifier",
    )
    op.add_column(
        "notifications",
        sa.Column("digest_due_at", sa.DateTime(timezone=True), nullable=True),
        schema="notifier",
    )
    op.add_column(
        "notifications",
        sa.Column("hold_from", sa.DateTime(timezone=True), nullable=True),
        schema="notifier",
    )
    op.create_index(
        "ix_notifications_digest",
        "notifications",
        ["user_id", "digest_id"],
        schema="notifier",
        postgresql_where=sa.text("digest_id <> ''"),
    )
    op.create_index(
        "ix_notifications_held",
        "notifications",
        ["user_id", "digest_due_at"],
        schema="notifier",
        postgresql_where=sa.text(f"state = {HELD}"),
    )


def downgrade() -> None:
    op.drop_index("ix_notifications_held", "notifications", schema="notifier")
    op.drop_index("ix_notifications_digest", "notifications", schema="notifier")
    for column in ("hold_from", "digest_due_at", "digest_id", "kind"):
        op.drop_column("notifications", column, schema="notifier")

"""recommender: tips, user_context, outbox, processed_messages.

Revision ID: recommender_0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from kernel.outbox import outbox_table, processed_table

revision = "recommender_0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = "recommender"


def upgrade() -> None:
    op.create_table(
        "tips",
        sa.Column("user_id", sa.Text, primary_key=True),
        sa.Column("tip_id", sa.Text, primary_key=True),
        sa.Column("catalog_tip", sa.Text, nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("category", sa.Text, nullable=False),
        sa.Column("explanation", sa.Text, nullable=False),
        sa.Column("effort", sa.Integer, nullable=False),
        sa.Column("minutes_needed", sa.Integer, nullable=False),
        sa.Column("state", sa.Integer, nullable=False),
        sa.Column("reaction", sa.Integer, nullable=False, server_default="0"),
        sa.Column("react_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("snooze_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decide_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expire_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_version", sa.Text, nullable=False),
        schema=SCHEMA,
    )
    op.create_index("ix_tips_user_decide", "tips", ["user_id", "decide_time"], schema=SCHEMA)
    op.create_table(
        "user_context",
        sa.Column("user_id", sa.Text, primary_key=True),
        sa.Column("context", JSONB, nullable=False),
        sa.Column(
            "update_time", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema=SCHEMA,
    )
    metadata = sa.MetaData(schema=SCHEMA)
    outbox_table(metadata).create(op.get_bind())
    processed_table(metadata).create(op.get_bind())


def downgrade() -> None:
    for table in ("processed_messages", "outbox", "user_context", "tips"):
        op.drop_table(table, schema=SCHEMA)

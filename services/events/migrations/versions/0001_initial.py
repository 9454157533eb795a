"""events: signals, outbox.

Revision ID: events_0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from kernel.outbox import outbox_table

revision = "events_0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = "events"


def upgrade() -> None:
    op.create_table(
        "signals",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("client_signal_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Integer, nullable=False),
        sa.Column("source", sa.Integer, nullable=False),
        sa.Column("connection", sa.Text, nullable=False, server_default=""),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ingest_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.UniqueConstraint("user_id", "source", "client_signal_id", name="uq_signals_client_id"),
        schema=SCHEMA,
    )
    op.create_index("ix_signals_user_start", "signals", ["user_id", "start_time"], schema=SCHEMA)
    op.create_index("ix_signals_user_ingest", "signals", ["user_id", "ingest_time"], schema=SCHEMA)
    outbox_table(sa.MetaData(schema=SCHEMA)).create(op.get_bind())


def downgrade() -> None:
    op.drop_table("outbox", schema=SCHEMA)
    op.drop_table("signals", schema=SCHEMA)

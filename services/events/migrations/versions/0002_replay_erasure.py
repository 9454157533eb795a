"""events: time indexes for replaying all users, processed messages for consumers.

Revision ID: events_0002
Revises: events_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from kernel.outbox import processed_table

revision = "events_0002"
down_revision = "events_0001"
branch_labels = None
depends_on = None

SCHEMA = "events"


def upgrade() -> None:
    op.create_index("ix_signals_start_id", "signals", ["start_time", "id"], schema=SCHEMA)
    op.create_index("ix_signals_ingest_id", "signals", ["ingest_time", "id"], schema=SCHEMA)
    # The erasure consumer claims each UserDeleted here (kernel.outbox.claim).
    processed_table(sa.MetaData(schema=SCHEMA)).create(op.get_bind())


def downgrade() -> None:
    op.drop_table("processed_messages", schema=SCHEMA)
    op.drop_index("ix_signals_ingest_id", "signals", schema=SCHEMA)
    op.drop_index("ix_signals_start_id", "signals", schema=SCHEMA)

"""Initial auth schema: the outbox and processed-messages tables.

Revision ID: auth_0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op
from sqlalchemy import MetaData

from kernel.outbox import outbox_table, processed_table

revision: str = "auth_0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Built from a MetaData of its own so later changes to store.py cannot
    # change what this revision did.
    metadata = MetaData(schema="auth")
    outbox_table(metadata)
    processed_table(metadata)
    metadata.create_all(op.get_bind())


def downgrade() -> None:
    op.drop_table("processed_messages", schema="auth")
    op.drop_table("outbox", schema="auth")

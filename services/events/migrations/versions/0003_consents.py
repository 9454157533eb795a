"""events: the consent read model fed by tips.profile.v1.ConsentChanged.

Revision ID: events_0003
Revises: events_0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "events_0003"
down_revision = "events_0002"
branch_labels = None
depends_on = None

SCHEMA = "events"


def upgrade() -> None:
    op.create_table(
        "consents",
        sa.Column("user_id", sa.Text(), primary_key=True),
        sa.Column("purpose", sa.Integer(), primary_key=True),
        sa.Column("granted", sa.Boolean(), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("consents", schema=SCHEMA)

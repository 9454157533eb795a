"""recommender: a policy snapshot also records the rewards folded in above its
sequence (replicas fold each other's rewards as they arrive, not in order).

Revision ID: recommender_0003
Revises: recommender_0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "recommender_0003"
down_revision = "recommender_0002"
branch_labels = None
depends_on = None

SCHEMA = "recommender"


def upgrade() -> None:
    op.add_column(
        "policy_state",
        sa.Column(
            "applied_above",
            ARRAY(sa.BigInteger),
            nullable=False,
            server_default=sa.text("'{}'::bigint[]"),
        ),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_column("policy_state", "applied_above", schema=SCHEMA)

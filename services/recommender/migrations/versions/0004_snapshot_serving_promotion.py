"""recommender: a policy snapshot also records the model version scoring and the
promotion the policy went on from (a restart serves the same version and does
not apply that promotion again).

Revision ID: recommender_0004
Revises: recommender_0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "recommender_0004"
down_revision = "recommender_0003"
branch_labels = None
depends_on = None

SCHEMA = "recommender"


def upgrade() -> None:
    for name in ("serving_version", "promoted_version"):
        op.add_column(
            "policy_state",
            sa.Column(name, sa.Text, nullable=False, server_default=sa.text("''")),
            schema=SCHEMA,
        )
    op.add_column(
        "policy_state",
        sa.Column("promote_time", sa.DateTime(timezone=True), nullable=True),
        schema=SCHEMA,
    )


def downgrade() -> None:
    for name in ("promote_time", "promoted_version", "serving_version"):
        op.drop_column("policy_state", name, schema=SCHEMA)

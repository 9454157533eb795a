"""recommender: an index on ``tips.reward_time`` for the rewards after a promotion.

Following a promotion (docs/decisions.md, 34), a replica folds every reward
assigned after the promotion's time onto the promoted version
(``reward_store.rewards_since``: ``WHERE reward_time > $since``). Without an
index that read scans the whole decision log, which only grows; the index is
partial, as ``ix_tips_reward_seq`` is, because most rows of a young log wait
for their reward.

Revision ID: recommender_0006
Revises: recommender_0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "recommender_0006"
down_revision = "recommender_0005"
branch_labels = None
depends_on = None

SCHEMA = "recommender"


def upgrade() -> None:
    op.create_index(
        "ix_tips_reward_time",
        "tips",
        ["reward_time"],
        schema=SCHEMA,
        postgresql_where=sa.text("reward_time IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_tips_reward_time", "tips", schema=SCHEMA)

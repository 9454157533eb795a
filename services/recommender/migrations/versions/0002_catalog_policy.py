"""recommender: tip catalog, decision log columns (features, scores, propensity,
reward), policy snapshots and model exports.

Revision ID: recommender_0002
Revises: recommender_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "recommender_0002"
down_revision = "recommender_0001"
branch_labels = None
depends_on = None

SCHEMA = "recommender"
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "catalog_tips",
        sa.Column("tip_id", sa.Text, primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("category", sa.Text, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("etag", sa.Text, nullable=False),
        sa.Column("catalog_version", sa.Text, nullable=False),
        sa.Column("create_time", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("update_time", TS, nullable=False, server_default=sa.func.now()),
        schema=SCHEMA,
    )
    op.create_table(
        "catalog_meta",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("update_time", TS, nullable=False, server_default=sa.func.now()),
        schema=SCHEMA,
    )
    op.create_table(
        "catalog_imports",
        sa.Column("version", sa.Text, primary_key=True),
        sa.Column("content_hash", sa.Text, nullable=False),
        sa.Column("import_time", TS, nullable=False, server_default=sa.func.now()),
        schema=SCHEMA,
    )
    op.execute(f"CREATE SEQUENCE {SCHEMA}.reward_seq")
    for column in (
        sa.Column("catalog_version", sa.Text, nullable=False, server_default=""),
        sa.Column("policy_version", sa.Text, nullable=False, server_default=""),
        sa.Column("propensity", sa.Float, nullable=False, server_default="1"),
        sa.Column("explored", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("rank", sa.Integer, nullable=False, server_default="0"),
        sa.Column("row", sa.LargeBinary, nullable=True),
        sa.Column("context", JSONB, nullable=True),
        sa.Column("candidates", JSONB, nullable=True),
        sa.Column("reward", sa.Float, nullable=True),
        sa.Column("reward_source", sa.Integer, nullable=True),
        sa.Column("reward_time", TS, nullable=True),
        sa.Column("reward_seq", sa.BigInteger, nullable=True),
    ):
        op.add_column("tips", column, schema=SCHEMA)
    # The reward sweeper scans only decisions still waiting for their reward.
    op.create_index(
        "ix_tips_unrewarded",
        "tips",
        ["decide_time"],
        schema=SCHEMA,
        postgresql_where=sa.text("reward IS NULL"),
    )
    op.create_index(
        "ix_tips_reward_seq",
        "tips",
        ["reward_seq"],
        schema=SCHEMA,
        postgresql_where=sa.text("reward_seq IS NOT NULL"),
    )
    op.create_table(
        "policy_state",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("state", sa.LargeBinary, nullable=False),
        sa.Column("reward_seq", sa.BigInteger, nullable=False),
        sa.Column("update_time", TS, nullable=False, server_default=sa.func.now()),
        schema=SCHEMA,
    )
    op.create_table(
        "policy_exports",
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("artifact_uri", sa.Text, nullable=False),
        sa.Column("base_model_version", sa.Text, nullable=False),
        sa.Column("online_update_count", sa.BigInteger, nullable=False),
        sa.Column("export_time", TS, nullable=False),
        schema=SCHEMA,
    )


def downgrade() -> None:
    for table in ("policy_exports", "policy_state", "catalog_imports", "catalog_meta"):
        op.drop_table(table, schema=SCHEMA)
    op.drop_table("catalog_tips", schema=SCHEMA)
    op.drop_index("ix_tips_reward_seq", "tips", schema=SCHEMA)
    op.drop_index("ix_tips_unrewarded", "tips", schema=SCHEMA)
    for name in (
        "catalog_version", "policy_version", "propensity", "explored", "rank", "row",
        "context", "candidates", "reward", "reward_source", "reward_time", "reward_seq",
    ):  # fmt: skip
        op.drop_column("tips", name, schema=SCHEMA)
    op.execute(f"DROP SEQUENCE {SCHEMA}.reward_seq")

"""ml_pipelines: registry, logged decisions, training runs, backfills, daily features.

Revision ID: ml_pipelines_0002
Revises: ml_pipelines_0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "ml_pipelines_0002"
down_revision: str | Sequence[str] | None = "ml_pipelines_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "ml_pipelines"


def _ts(name: str, nullable: bool = True, now: bool = False) -> sa.Column[object]:
    default = sa.func.now() if now else None
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, server_default=default)


def upgrade() -> None:
    # Written out (not taken from store.py) so later edits there cannot change it.
    op.create_table(
        "models",
        sa.Column("model_id", sa.Text, primary_key=True),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("algorithm", sa.Text, nullable=False),
        sa.Column("promoted_version", sa.Integer, nullable=True),
        _ts("create_time", False, True),
        _ts("update_time", False, True),
        schema=SCHEMA,
    )
    op.create_table(
        "model_versions",
        sa.Column("model_id", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("artifact_uri", sa.Text, nullable=False),
        sa.Column("state", sa.SmallInteger, nullable=False),
        sa.Column("metrics", JSONB, nullable=False, server_default="{}"),
        sa.Column("evaluation", sa.LargeBinary, nullable=True),
        sa.Column("training_run", sa.Text, nullable=False, server_default=""),
        sa.Column("feature_schema_version", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("request_id", sa.Text, nullable=True),
        _ts("create_time", False, True),
        _ts("promote_time"),
        sa.PrimaryKeyConstraint("model_id", "version"),
        sa.UniqueConstraint("model_id", "request_id", name="uq_model_versions_request"),
        schema=SCHEMA,
    )
    op.create_table(
        "logged_decisions",
        sa.Column("tip", sa.Text, primary_key=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("decided", sa.Boolean, nullable=False, server_default="false"),
        _ts("decide_time"),
        sa.Column("catalog_tip", sa.Text, nullable=False),
        sa.Column("propensity", sa.Float, nullable=True),
        sa.Column("candidates", JSONB, nullable=True),
        sa.Column("context", JSONB, nullable=True),
        sa.Column("feature_schema_version", sa.Text, nullable=True),
        sa.Column("model_version", sa.Text, nullable=False, server_default=""),
        sa.Column("policy_name", sa.Text, nullable=False, server_default=""),
        sa.Column("reward", sa.Float, nullable=True),
        sa.Column("reward_source", sa.SmallInteger, nullable=True),
        _ts("reward_time"),
        schema=SCHEMA,
    )
    op.create_index("ix_logged_decisions_user", "logged_decisions", ["user_id"], schema=SCHEMA)
    op.create_index(
        "ix_logged_decisions_joined",
        "logged_decisions",
        ["decide_time"],
        schema=SCHEMA,
        postgresql_where=sa.text("decided AND reward IS NOT NULL"),
    )
    op.create_table(
        "training_runs",
        sa.Column("run_id", sa.Text, primary_key=True),
        sa.Column("model_id", sa.Text, nullable=False),
        sa.Column("algorithm", sa.Text, nullable=False),
        sa.Column("params", JSONB, nullable=False),
        _ts("window_start", False),
        _ts("window_end", False),
        sa.Column("state", sa.SmallInteger, nullable=False),
        sa.Column("progress", sa.Float, nullable=False, server_default="0"),
        sa.Column("metrics", JSONB, nullable=False, server_default="{}"),
        sa.Column("model_version", sa.Integer, nullable=True),
        sa.Column("error", sa.LargeBinary, nullable=True),
        sa.Column("content_hash", sa.Text, nullable=False),
        _ts("create_time", False, True),
        _ts("start_time"),
        _ts("end_time"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_training_runs_created", "training_runs", ["create_time", "run_id"], schema=SCHEMA
    )
    op.create_table(
        "feature_backfills",
        sa.Column("backfill_id", sa.Text, primary_key=True),
        sa.Column("feature_schema_version", sa.Text, nullable=False),
        sa.Column("feature_names", JSONB, nullable=False),
        sa.Column("users", JSONB, nullable=False),
        _ts("window_start", False),
        _ts("window_end", False),
        sa.Column("state", sa.SmallInteger, nullable=False),
        sa.Column("progress", sa.Float, nullable=False, server_default="0"),
        sa.Column("processed_user_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("written_row_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error", sa.LargeBinary, nullable=True),
        sa.Column("content_hash", sa.Text, nullable=False),
        _ts("create_time", False, True),
        _ts("start_time"),
        _ts("end_time"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_feature_backfills_created", "feature_backfills", ["create_time"], schema=SCHEMA
    )
    op.create_table(
        "user_daily_features",
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("feature_schema_version", sa.Text, nullable=False),
        sa.Column("features", JSONB, nullable=False),
        _ts("update_time", False, True),
        sa.PrimaryKeyConstraint("user_id", "day", "feature_schema_version"),
        schema=SCHEMA,
    )
    op.create_table(
        "erased_users",
        sa.Column("user_hash", sa.Text, primary_key=True),
        _ts("erase_time", False, True),
        schema=SCHEMA,
    )


def downgrade() -> None:
    for table in (
        "erased_users",
        "user_daily_features",
        "feature_backfills",
        "training_runs",
        "logged_decisions",
        "model_versions",
        "models",
    ):
        op.drop_table(table, schema=SCHEMA)

"""ml_pipelines: the model registry moves to MLflow; training runs name their MLflow run.

Models, versions, their state, evaluations and the promoted version are kept
in MLflow now (docs/decisions.md, 36): the ``models`` and ``model_versions``
tables go, so nothing holds a second copy.
Rows there are not carried over: their version directories stay in the model
repository, and a version is registered again by ``CreateModelVersion`` (or
the recommender's next export).

Revision ID: ml_pipelines_0004
Revises: ml_pipelines_0003
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "ml_pipelines_0004"
down_revision: str | Sequence[str] | None = "ml_pipelines_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "ml_pipelines"


def upgrade() -> None:
    op.drop_table("model_versions", schema=SCHEMA)
    op.drop_table("models", schema=SCHEMA)
    op.add_column(
        "training_runs", sa.Column("mlflow_run_id", sa.Text, nullable=True), schema=SCHEMA
    )


def downgrade() -> None:
    # The tables come back empty (as 0002 made them): MLflow keeps the registry.
    op.drop_column("training_runs", "mlflow_run_id", schema=SCHEMA)
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "models",
        sa.Column("model_id", sa.Text, primary_key=True),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("algorithm", sa.Text, nullable=False),
        sa.Column("promoted_version", sa.Integer, nullable=True),
        sa.Column("create_time", ts, nullable=False, server_default=sa.func.now()),
        sa.Column("update_time", ts, nullable=False, server_default=sa.func.now()),
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
        sa.Column("create_time", ts, nullable=False, server_default=sa.func.now()),
        sa.Column("promote_time", ts, nullable=True),
        sa.PrimaryKeyConstraint("model_id", "version"),
        sa.UniqueConstraint("model_id", "request_id", name="uq_model_versions_request"),
        schema=SCHEMA,
    )

"""ml_pipelines: the rank of each logged decision in its answer (slates).

Revision ID: ml_pipelines_0003
Revises: ml_pipelines_0002
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "ml_pipelines_0003"
down_revision: str | Sequence[str] | None = "ml_pipelines_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "ml_pipelines"


def upgrade() -> None:
    # Rows logged before stay NULL (rank unknown): evaluation leaves them out
    # rather than guess which were first picks (docs/decisions.md, 29).
    op.add_column("logged_decisions", sa.Column("rank", sa.Integer, nullable=True), schema=SCHEMA)


def downgrade() -> None:
    op.drop_column("logged_decisions", "rank", schema=SCHEMA)

"""The ml_pipelines service's tables, all in schema ``ml_pipelines``.

The model registry (models, versions, their state, evaluations, the promoted
version) is in MLflow, not here (``mlflow_registry``; migration 0004 dropped
the ``models`` and ``model_versions`` tables it replaced).

- ``logged_decisions``: the training/evaluation log, one row per decision
  (``TipDecided``) joined with its reward (``RewardAssigned``), whichever
  arrives first;
- ``training_runs``, ``feature_backfills``: batch jobs and their progress;
- ``user_daily_features``: per-user daily features written by backfills;
- ``erased_users``: hashes of erased users, so late events recreate nothing.
"""

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

from kernel.outbox import outbox_table, processed_table

metadata = MetaData(schema="ml_pipelines")
# Events waiting to be published (transactional outbox).
outbox = outbox_table(metadata)
# Bus messages already handled, for idempotent consumers.
processed_messages = processed_table(metadata)

_now = func.now()

logged_decisions = Table(
    "logged_decisions",
    metadata,
    Column("tip", Text, primary_key=True),  # users/{user}/tips/{tip}
    Column("user_id", Text, nullable=False),
    Column("decided", Boolean, nullable=False, server_default="false"),
    Column("decide_time", DateTime(timezone=True), nullable=True),
    Column("catalog_tip", Text, nullable=False),  # the action (catalog tip id)
    Column("propensity", Float, nullable=True),
    # [[catalog tip id, score, probability], ...] in the logged order.
    Column("candidates", JSONB, nullable=True),
    Column("context", JSONB, nullable=True),  # {feature name: value or null}
    Column("feature_schema_version", Text, nullable=True),
    Column("model_version", Text, nullable=False, server_default=""),
    Column("policy_name", Text, nullable=False, server_default=""),
    # Position in the recommender's answer, 0 = its first pick. A later pick's
    # propensity is conditional on the earlier picks. NULL: logged before the
    # rank was kept (or no TipDecided yet).
    Column("rank", Integer, nullable=True),
    Column("reward", Float, nullable=True),
    Column("reward_source", SmallInteger, nullable=True),
    Column("reward_time", DateTime(timezone=True), nullable=True),
)
Index("ix_logged_decisions_user", logged_decisions.c.user_id)
# Training and evaluation read joined rows by decision time.
Index(
    "ix_logged_decisions_joined",
    logged_decisions.c.decide_time,
    postgresql_where=logged_decisions.c.decided & logged_decisions.c.reward.is_not(None),
)

training_runs = Table(
    "training_runs",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("model_id", Text, nullable=False),
    Column("algorithm", Text, nullable=False),
    Column("params", JSONB, nullable=False),
    Column("window_start", DateTime(timezone=True), nullable=False),
    Column("window_end", DateTime(timezone=True), nullable=False),
    Column("state", SmallInteger, nullable=False),
    Column("progress", Float, nullable=False, server_default="0"),
    Column("metrics", JSONB, nullable=False, server_default="{}"),
    Column("model_version", Integer, nullable=True),
    Column("error", LargeBinary, nullable=True),  # google.rpc.Status
    # The MLflow run of the latest attempt (params, metrics per chunk, artifacts).
    Column("mlflow_run_id", Text, nullable=True),
    Column("content_hash", Text, nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False, server_default=_now),
    Column("start_time", DateTime(timezone=True), nullable=True),
    Column("end_time", DateTime(timezone=True), nullable=True),
)
Index("ix_training_runs_created", training_runs.c.create_time, training_runs.c.run_id)

feature_backfills = Table(
    "feature_backfills",
    metadata,
    Column("backfill_id", Text, primary_key=True),
    Column("feature_schema_version", Text, nullable=False),
    Column("feature_names", JSONB, nullable=False),
    Column("users", JSONB, nullable=False),
    Column("window_start", DateTime(timezone=True), nullable=False),
    Column("window_end", DateTime(timezone=True), nullable=False),
    Column("state", SmallInteger, nullable=False),
    Column("progress", Float, nullable=False, server_default="0"),
    Column("processed_user_count", Integer, nullable=False, server_default="0"),
    Column("written_row_count", Integer, nullable=False, server_default="0"),
    Column("error", LargeBinary, nullable=True),
    Column("content_hash", Text, nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False, server_default=_now),
    Column("start_time", DateTime(timezone=True), nullable=True),
    Column("end_time", DateTime(timezone=True), nullable=True),
)
Index("ix_feature_backfills_created", feature_backfills.c.create_time)

user_daily_features = Table(
    "user_daily_features",
    metadata,
    Column("user_id", Text, nullable=False),
    Column("day", Date, nullable=False),
    Column("feature_schema_version", Text, nullable=False),
    Column("features", JSONB, nullable=False),
    Column("update_time", DateTime(timezone=True), nullable=False, server_default=_now),
    PrimaryKeyConstraint("user_id", "day", "feature_schema_version"),
)

# Users erased (sha256 of the id, so the table names nobody): events and
# backfills arriving after the erasure must not recreate their rows.
erased_users = Table(
    "erased_users",
    metadata,
    Column("user_hash", Text, primary_key=True),
    Column("erase_time", DateTime(timezone=True), nullable=False, server_default=_now),
)

"""Devices (sealed push tokens) and notifications (delivery log and queue).

Revision ID: notifier_0002
Revises: notifier_0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op
from sqlalchemy import (
    ARRAY,
    Column,
    Date,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "notifier_0002"
down_revision: str | Sequence[str] | None = "notifier_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# The tables as this revision creates them, copied (not imported) from
# store.py so later changes there cannot change what this revision did.
def devices_table(md: MetaData) -> Table:
    table = Table(
        "devices",
        md,
        Column("user_id", Text, nullable=False),
        Column("device_id", Text, nullable=False),
        Column("platform", Integer, nullable=False),
        Column("app_version", Text, nullable=False, server_default=""),
        Column("display_name", Text, nullable=False, server_default=""),
        Column("state", Integer, nullable=False),
        Column("token_hash", LargeBinary, nullable=False),
        Column("key_id", Text, nullable=False),
        Column("wrapped_key", LargeBinary, nullable=False),
        Column("token_ciphertext", LargeBinary, nullable=False),
        Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("last_push_time", DateTime(timezone=True), nullable=True),
        PrimaryKeyConstraint("user_id", "device_id"),
        UniqueConstraint("token_hash", name="uq_devices_token_hash"),
    )
    Index("ix_devices_user_create", table.c.user_id, table.c.create_time, table.c.device_id)
    return table


def notifications_table(md: MetaData) -> Table:
    table = Table(
        "notifications",
        md,
        Column("user_id", Text, nullable=False),
        Column("notification_id", Text, nullable=False),
        Column("tip", Text, nullable=False),
        Column("title", Text, nullable=False),
        Column("body", Text, nullable=False),
        Column("channel", Integer, nullable=False, server_default="0"),
        Column("requested_channels", ARRAY(Integer), nullable=False),
        Column("state", Integer, nullable=False),
        Column("suppression_reason", Integer, nullable=False, server_default="0"),
        Column("dedupe_key", Text, nullable=False),
        Column("duplicate_of", Text, nullable=False, server_default=""),
        # Device ids a push was accepted for (a retry skips them).
        Column("devices", ARRAY(Text), nullable=False, server_default="{}"),
        Column("error", LargeBinary, nullable=True),  # a serialized google.rpc.Status
        Column("data", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
        Column("request_id", Text, nullable=False, server_default=""),
        # The user's local day it counts against for the frequency cap.
        Column("local_day", Date, nullable=True),
        Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("not_before_time", DateTime(timezone=True), nullable=True),
        Column("expire_time", DateTime(timezone=True), nullable=True),
        Column("send_time", DateTime(timezone=True), nullable=True),
        Column("deliver_time", DateTime(timezone=True), nullable=True),
        Column("update_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
        # Queue: when a QUEUED row is due (or its lease ends), and tries so far.
        Column("next_attempt_at", DateTime(timezone=True), nullable=True),
        Column("attempts", Integer, nullable=False, server_default="0"),
        PrimaryKeyConstraint("user_id", "notification_id"),
    )
    Index(
        "ix_notifications_user_create",
        table.c.user_id,
        table.c.create_time.desc(),
        table.c.notification_id.desc(),
    )
    Index("ix_notifications_dedupe", table.c.user_id, table.c.dedupe_key, table.c.create_time)
    Index("ix_notifications_cap", table.c.user_id, table.c.local_day)
    Index(
        "uq_notifications_request",
        table.c.user_id,
        table.c.request_id,
        unique=True,
        postgresql_where=table.c.request_id != "",
    )
    # The worker only scans queued rows: keep that index tiny.
    Index(
        "ix_notifications_due",
        table.c.next_attempt_at,
        postgresql_where=table.c.next_attempt_at.is_not(None),
    )
    return table


def upgrade() -> None:
    metadata = MetaData(schema="notifier")
    devices_table(metadata)
    notifications_table(metadata)
    metadata.create_all(op.get_bind())


def downgrade() -> None:
    op.drop_table("notifications", schema="notifier")
    op.drop_table("devices", schema="notifier")

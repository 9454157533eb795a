"""The notifier service's tables, all in schema `notifier`.

- ``devices``: push targets. The token is stored only sealed (AES-256-GCM
  envelope: ``key_id``, ``wrapped_key``, ``token_ciphertext``) and as its
  SHA-256 (``token_hash``, unique: one install belongs to one user).
- ``notifications``: the delivery log AND the delivery queue. A QUEUED row
  is due at ``next_attempt_at``; the worker claims due rows with
  ``FOR UPDATE SKIP LOCKED`` and moves ``next_attempt_at`` one lease ahead,
  so a worker that dies mid-delivery leaves the row to be claimed again.
  The daily digest lives here too (``kind`` DIGEST rows; tips HELD for one
  are queued at their ``digest_due_at`` and point at it by ``digest_id``).
"""

from __future__ import annotations

from typing import Any

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

from kernel.outbox import outbox_table, processed_table
from tips.notifier.v1 import notification_pb2

HELD = notification_pb2.NOTIFICATION_STATE_HELD

metadata = MetaData(schema="notifier")
# Events waiting to be published (transactional outbox).
outbox = outbox_table(metadata)
# Bus messages already handled, for idempotent consumers.
processed_messages = processed_table(metadata)


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
        *digest_columns(),
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
    digest_indexes(table)
    # The worker only scans queued rows: keep that index tiny.
    Index(
        "ix_notifications_due",
        table.c.next_attempt_at,
        postgresql_where=table.c.next_attempt_at.is_not(None),
    )
    return table


def digest_columns() -> list[Column[Any]]:
    """The daily digest's columns (migration notifier_0003)."""
    return [
        # NotificationKind: a tip, or a digest carrying tips.
        Column("kind", Integer, nullable=False, server_default="1"),
        # For a tip: the digest notification carrying it, once it is built.
        Column("digest_id", Text, nullable=False, server_default=""),
        # For a HELD tip: when its digest is due, and from when it may go
        # (max of the request and its not_before_time), to reschedule it.
        Column("digest_due_at", DateTime(timezone=True), nullable=True),
        Column("hold_from", DateTime(timezone=True), nullable=True),
    ]


def digest_indexes(table: Table) -> None:
    Index(
        "ix_notifications_digest",
        table.c.user_id,
        table.c.digest_id,
        postgresql_where=table.c.digest_id != "",
    )
    # Held tips are few and short-lived: a partial index finds a user's.
    Index(
        "ix_notifications_held",
        table.c.user_id,
        table.c.digest_due_at,
        postgresql_where=table.c.state == HELD,
    )


devices = devices_table(metadata)
notifications = notifications_table(metadata)

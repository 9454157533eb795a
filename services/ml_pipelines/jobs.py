"""What training runs and feature backfills share: ids, content hashes, final states."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from google.rpc import code_pb2, status_pb2  # type: ignore[import-untyped]
from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.errors import AlreadyExists


def new_id() -> str:
    return uuid.uuid4().hex[:20]


def content_hash(content: dict[str, Any]) -> str:
    """Fingerprint of a create request's content (a retry with the same id must match it)."""
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def check_same(existing_hash: str, new_hash: str, name: str) -> None:
    if existing_hash != new_hash:
        raise AlreadyExists(
            f"{name} already exists with other content", metadata={"resource": name}
        )


async def insert_once(
    session: AsyncSession,
    table: Table,
    key: str,
    values: dict[str, Any],
    name: str,
) -> tuple[Any, bool]:
    """Create a job row, or return the one a retry of the same request made.

    Job creation is idempotent by id (``values[key]``): the same request again
    returns the existing row (``created`` False); other content under the same
    id is ALREADY_EXISTS. ``values`` carries its ``content_hash``.
    """
    statement = insert(table).values(**values).on_conflict_do_nothing().returning(*table.c)
    row = (await session.execute(statement)).first()
    if row is not None:
        return row, True
    existing = (await session.execute(select(table).where(table.c[key] == values[key]))).first()
    if existing is None:  # deleted between the two statements: let the caller retry
        raise AlreadyExists(f"{name} is being replaced; retry", metadata={"resource": name})
    check_same(existing.content_hash, values["content_hash"], name)
    return existing, False


def error_status(exc: BaseException) -> bytes:
    """A ``google.rpc.Status`` for a failed job (the message only: no stack, no secrets)."""
    code = getattr(exc, "code", None)
    number = code.value[0] if code is not None and hasattr(code, "value") else code_pb2.INTERNAL
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    result: bytes = status_pb2.Status(code=number, message=message[:1000]).SerializeToString()
    return result

"""What training runs and feature backfills share: ids, content hashes, final states."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from google.rpc import code_pb2, status_pb2  # type: ignore[import-untyped]

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


def error_status(exc: BaseException) -> bytes:
    """A ``google.rpc.Status`` for a failed job (the message only: no stack, no secrets)."""
    code = getattr(exc, "code", None)
    number = code.value[0] if code is not None and hasattr(code, "value") else code_pb2.INTERNAL
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    result: bytes = status_pb2.Status(code=number, message=message[:1000]).SerializeToString()
    return result

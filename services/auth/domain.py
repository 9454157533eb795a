"""Pure helpers of the auth service: ids, resource names, request checks, protos."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from typing import Any

from kernel.errors import InvalidArgument
from kernel.identity import Caller, require_caller, require_owner
from kernel.names import USER, Pattern
from kernel.timestamps import optional_timestamp, timestamp
from tips.auth.v1 import identity_pb2, session_pb2

PROVIDERS = (identity_pb2.IDENTITY_PROVIDER_GOOGLE, identity_pb2.IDENTITY_PROVIDER_APPLE)
PLATFORMS = frozenset(session_pb2.Platform.values())
MAX_DEVICE_NAME = 200
MAX_USER_AGENT = 512
MAX_NONCE = 512


def new_id(prefix: str) -> str:
    """A random id like ``u_3f9a...`` (safe in resource names and metadata)."""
    return f"{prefix}_{secrets.token_hex(12)}"


SESSION = Pattern("users/{user}/sessions/{session}")
IDENTITY = Pattern("users/{user}/identities/{identity}")
# ``users/me`` names the caller in the REST paths of this service.
ME = "me"


def session_name(user_id: str, session_id: str) -> str:
    return SESSION.format(user_id, session_id)


def identity_name(user_id: str, identity_id: str) -> str:
    return IDENTITY.format(user_id, identity_id)


def resolve_parent(parent: str, field: str = "parent") -> Caller:
    """The caller, who must own ``users/{user}`` (``users/me`` means the caller)."""
    if USER.parse_one(parent, field) == ME:
        return require_caller()
    return require_owner(parent, field)


def resolve_child(name: str, pattern: Pattern, field: str = "name") -> tuple[Caller, str]:
    """The caller and the child id of ``users/{user}/<collection>/{id}``, owned by the caller."""
    user_id, child_id = pattern.parse(name, field)
    if user_id == ME:
        return require_caller(), child_id
    return require_owner(name, field), child_id


def check_provider(value: int, field: str = "provider") -> int:
    if value not in PROVIDERS:
        raise InvalidArgument([(field, "must be IDENTITY_PROVIDER_GOOGLE or _APPLE")])
    return value


def check_sign_in_request(provider: int, id_token: str, nonce: str, prefix: str = "") -> None:
    problems: list[tuple[str, str]] = []
    if provider not in PROVIDERS:
        problems.append((f"{prefix}provider", "must be IDENTITY_PROVIDER_GOOGLE or _APPLE"))
    if not id_token:
        problems.append((f"{prefix}id_token", "is required"))
    if not nonce:
        problems.append((f"{prefix}nonce", "is required"))
    elif len(nonce) > MAX_NONCE:
        problems.append((f"{prefix}nonce", f"must be at most {MAX_NONCE} characters"))
    if problems:
        raise InvalidArgument(problems)


def check_device(device_name: str, platform: int) -> None:
    problems: list[tuple[str, str]] = []
    if len(device_name) > MAX_DEVICE_NAME:
        problems.append(("device_name", f"must be at most {MAX_DEVICE_NAME} characters"))
    if platform not in PLATFORMS:
        problems.append(("platform", f"unknown platform {platform}"))
    if problems:
        raise InvalidArgument(problems)


def expected_nonce(provider: int, raw_nonce: str) -> str:
    """The nonce claim the provider put in the token for the app's raw nonce.

    Apple's SDKs take the SHA-256 hex digest of the raw nonce (and put that
    in the token); Google's take the raw value.
    """
    if provider == identity_pb2.IDENTITY_PROVIDER_APPLE:
        return hashlib.sha256(raw_nonce.encode()).hexdigest()
    return raw_nonce


def session_proto(row: Any, now: datetime, current_session: str | None) -> session_pb2.Session:
    """The Session resource of a ``sessions`` row."""
    if row.revoke_time is not None:
        state = session_pb2.SESSION_STATE_REVOKED
    elif row.expire_time <= now:
        state = session_pb2.SESSION_STATE_EXPIRED
    else:
        state = session_pb2.SESSION_STATE_ACTIVE
    out = session_pb2.Session(
        name=session_name(row.user_id, row.id),
        device_name=row.device_name,
        user_agent=row.user_agent,
        platform=row.platform,
        state=state,
        provider=row.provider,
        identity=identity_name(row.user_id, row.identity_id),
        create_time=optional_timestamp(row.create_time),
        last_use_time=optional_timestamp(row.last_use_time),
        expire_time=optional_timestamp(row.expire_time),
        revoke_reason=row.revoke_reason,
        current=current_session == row.id,
    )
    if row.revoke_time is not None:
        out.revoke_time.CopyFrom(timestamp(row.revoke_time))
    return out


def identity_proto(row: Any) -> identity_pb2.Identity:
    return identity_pb2.Identity(
        name=identity_name(row.user_id, row.id),
        provider=row.provider,
        subject=row.subject,
        email=row.email,
        email_verified=row.email_verified,
        link_time=optional_timestamp(row.link_time),
        last_sign_in_time=optional_timestamp(row.last_sign_in_time),
    )


def client_address(metadata: Any, peer: str) -> str:
    """Who is signing in, for the failed sign-in limit.

    The gateway APPENDS the address it saw to ``x-forwarded-for``, so the
    last entry is the one we can trust (earlier ones come from the client).
    Without it (a direct gRPC caller) the peer address is used.
    """
    for key, value in metadata or ():
        if key == "x-forwarded-for" and isinstance(value, str) and value.strip():
            last = value.split(",")[-1].strip()
            if last:
                return last[:100]
    host = peer or "unknown"
    # "ipv4:1.2.3.4:5678" / "ipv6:[::1]:5678": drop the port.
    if host.count(":") >= 2:
        host = host.rsplit(":", 1)[0]
    return host[:100]

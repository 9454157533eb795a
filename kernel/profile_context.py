"""The profile service's read model as other services ask it: one client, one consent mapping.

Events (consent gate), integrations (consent gate), the recommender (prefs
cache) and the notifier (every send) need a user's preferences and granted
consents. They ask ``ProfileInternalService.GetUserContext``, answered from
the profile service's memory, through ``user_context`` here:

- an unknown user is ``None`` (no profile: nothing granted, the defaults);
- any other failure is ``ProfileUnavailable`` (UNAVAILABLE with RetryInfo):
  each caller decides whether to fail closed, fall back or retry;
- the caller's identity and deadline go along (``kernel.clients``).

A consent's id is its purpose without the enum prefix, lower case with
hyphens: ``CONSENT_PURPOSE_CALENDAR_DATA_FOR_TIPS`` <-> ``calendar-data-for-tips``.
"""

from __future__ import annotations

from datetime import timedelta

import grpc

from kernel.clients import channel
from kernel.errors import Unavailable
from kernel.names import user_name
from kernel.settings import Settings
from tips.profile.v1 import (
    consent_pb2,
    profile_service_pb2,
    profile_service_pb2_grpc,
    user_context_pb2,
)

__all__ = [
    "ALL_PURPOSES",
    "ProfileUnavailable",
    "consent_id",
    "granted_ids",
    "purpose_of",
    "user_context",
]

_PREFIX = "CONSENT_PURPOSE_"
ALL_PURPOSES: tuple[int, ...] = tuple(
    v.number for v in consent_pb2.ConsentPurpose.DESCRIPTOR.values if v.number != 0
)


def consent_id(purpose: int) -> str:
    """``CONSENT_PURPOSE_FITNESS_DATA_FOR_TIPS`` (2) -> ``fitness-data-for-tips``."""
    name = consent_pb2.ConsentPurpose.Name(consent_pb2.ConsentPurpose.ValueType(purpose))
    return name.removeprefix(_PREFIX).lower().replace("_", "-")


_BY_ID: dict[str, int] = {consent_id(p): p for p in ALL_PURPOSES}


def purpose_of(consent: str) -> int | None:
    """The purpose a consent id names; None when it names none."""
    return _BY_ID.get(consent)


def granted_ids(context: user_context_pb2.UserContext) -> frozenset[str]:
    """The consent ids the user has granted."""
    return frozenset(consent_id(p) for p in context.granted_purposes)


class ProfileUnavailable(Unavailable):
    """The profile service did not answer; the caller retries, falls back or fails closed."""


async def user_context(
    settings: Settings, user_id: str, *, rpc_timeout: float | None = None
) -> user_context_pb2.UserContext | None:
    """The user's context; None when the profile service knows no such user."""
    stub = profile_service_pb2_grpc.ProfileInternalServiceStub(channel(settings, "profile"))
    request = profile_service_pb2.GetUserContextRequest(user=user_name(user_id))
    try:
        response = await stub.GetUserContext(request, timeout=rpc_timeout)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise ProfileUnavailable(
            f"the profile service did not answer ({exc.code().name}); retry later",
            reason="PROFILE_UNAVAILABLE",
            retry_after=timedelta(seconds=1),
        ) from None
    found: user_context_pb2.UserContext = response.user_context
    return found

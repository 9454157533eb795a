"""The user's preferences and consents, from the profile service's read model.

Asked on every SendNotification and again when a notification is delivered
(consent may have been withdrawn while it waited). No cache: the profile's
read model is in memory, one call costs well under a millisecond of its CPU,
and notifications are few per user per day.
"""

from __future__ import annotations

from datetime import timedelta

import grpc

from kernel.clients import channel
from kernel.errors import Unavailable
from services.notifier.settings import NotifierSettings
from tips.profile.v1 import profile_service_pb2, profile_service_pb2_grpc, user_context_pb2


class ProfileUnavailable(Unavailable):
    """The profile service did not answer: the caller retries (with its request_id)."""


async def user_context(
    settings: NotifierSettings, user_id: str
) -> user_context_pb2.UserContext | None:
    """The user's context; None when the profile service knows no such user."""
    stub = profile_service_pb2_grpc.ProfileInternalServiceStub(channel(settings, "profile"))
    request = profile_service_pb2.GetUserContextRequest(user=f"users/{user_id}")
    try:
        response = await stub.GetUserContext(
            request, timeout=settings.notifier_profile_timeout_seconds
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise ProfileUnavailable(
            f"the profile service did not answer ({exc.code().name}); retry later",
            retry_after=timedelta(seconds=1),
        ) from None
    found: user_context_pb2.UserContext = response.user_context
    return found

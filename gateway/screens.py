"""App screens composed at the edge (`tips.gateway.v1.ScreensService`).

One REST call per screen: the gateway calls the services a screen needs
concurrently, under the request's one deadline, and assembles the answer.
Essential parts fail the call; the others are left out and named in
``missing_parts`` with the error their service gave, so the app can still draw
the screen. Each call is a CLIENT span of the request's trace
(``gateway.telemetry.traced``): one screen, one trace.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2
from grpc_status import rpc_status

from gateway.telemetry import traced
from kernel.errors import InvalidArgument
from tips.gateway.v1 import screens_service_pb2 as screens_pb
from tips.integrations.v1 import integrations_service_pb2 as integrations_pb
from tips.integrations.v1 import integrations_service_pb2_grpc as integrations_grpc
from tips.profile.v1 import profile_service_pb2 as profile_pb
from tips.profile.v1 import profile_service_pb2_grpc as profile_grpc
from tips.recommender.v1 import recommender_service_pb2 as recommender_pb
from tips.recommender.v1 import recommender_service_pb2_grpc as recommender_grpc

Metadata = Sequence[tuple[str, str | bytes]]
R = TypeVar("R", bound=Message)
MAX_TIPS = 5
# A non-essential part may use at most this share of the request's deadline,
# so one slow service cannot hold the whole screen up.
OPTIONAL_PART_SHARE = 0.8
# The gRPC paths of the calls (their CLIENT spans' names).
LIST_TIPS = "/tips.recommender.v1.RecommenderService/ListTips"
GET_PROFILE = "/tips.profile.v1.ProfileService/GetProfile"
LIST_CONNECTIONS = "/tips.integrations.v1.IntegrationsService/ListConnections"


class HomeScreenComposer:
    """Builds `users/{user}/home` from the recommender, profile and integrations."""

    def __init__(self, channel: Callable[[str], grpc.aio.Channel]) -> None:
        # Channels are made on first use: a grpc.aio channel belongs to the
        # event loop it is created in, which is the server's, not start-up's.
        self._channel = channel
        self._stubs: (
            tuple[
                recommender_grpc.RecommenderServiceStub,
                profile_grpc.ProfileServiceStub,
                integrations_grpc.IntegrationsServiceStub,
            ]
            | None
        ) = None

    def _clients(
        self,
    ) -> tuple[
        recommender_grpc.RecommenderServiceStub,
        profile_grpc.ProfileServiceStub,
        integrations_grpc.IntegrationsServiceStub,
    ]:
        if self._stubs is None:
            self._stubs = (
                recommender_grpc.RecommenderServiceStub(self._channel("recommender")),
                profile_grpc.ProfileServiceStub(self._channel("profile")),
                integrations_grpc.IntegrationsServiceStub(self._channel("integrations")),
            )
        return self._stubs

    async def get_home_screen(
        self, request: screens_pb.GetHomeScreenRequest, metadata: Metadata, deadline_s: float
    ) -> screens_pb.GetHomeScreenResponse:
        user = _user_of(request.name)
        if not 0 <= request.tip_count <= MAX_TIPS:
            raise InvalidArgument([("tip_count", f"must be between 0 and {MAX_TIPS}")])
        optional_timeout = deadline_s * OPTIONAL_PART_SHARE
        recommender, profile_client, integrations = self._clients()
        tips_call = traced(
            LIST_TIPS,
            metadata,
            lambda md: recommender.ListTips(
                recommender_pb.ListTipsRequest(parent=user, page_size=request.tip_count or 1),
                metadata=md,
                timeout=deadline_s,
            ),
        )
        profile_call = _optional(
            "profile",
            lambda: traced(
                GET_PROFILE,
                metadata,
                lambda md: profile_client.GetProfile(
                    profile_pb.GetProfileRequest(name=f"{user}/profile"),
                    metadata=md,
                    timeout=optional_timeout,
                ),
            ),
        )
        connections_call = _optional(
            "connections",
            lambda: traced(
                LIST_CONNECTIONS,
                metadata,
                lambda md: integrations.ListConnections(
                    integrations_pb.ListConnectionsRequest(parent=user),
                    metadata=md,
                    timeout=optional_timeout,
                ),
            ),
        )
        # The essential call raises (and cancels nothing it should not: the
        # optional parts never raise).
        tips, (profile, profile_missing), (connections, connections_missing) = await asyncio.gather(
            tips_call, profile_call, connections_call
        )
        screen = screens_pb.HomeScreen(name=f"{user}/home", tips=tips.tips)
        if profile is not None:
            screen.profile.CopyFrom(profile.profile)
        if connections is not None:
            screen.connections.extend(connections.connections)
        screen.missing_parts.extend(
            part for part in (profile_missing, connections_missing) if part is not None
        )
        return screens_pb.GetHomeScreenResponse(home_screen=screen)


async def _optional(
    part: str, call: Callable[[], Awaitable[R]]
) -> tuple[R | None, screens_pb.MissingPart | None]:
    """The part's response, or None and why it is missing."""
    try:
        return await call(), None
    except grpc.aio.AioRpcError as error:
        return None, screens_pb.MissingPart(part=part, status=_status_of(error))


def _status_of(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    rich = rpc_status.from_call(error)  # type: ignore[arg-type]
    if rich is not None:
        return rich
    code = error.code().value[0] if error.code() else code_pb2.UNKNOWN
    return status_pb2.Status(code=code, message=error.details() or "")


def _user_of(name: str) -> str:
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != "users" or not parts[1] or parts[2] != "home":
        raise InvalidArgument([("name", f"must be users/{{user}}/home, got {name!r}")])
    return f"users/{parts[1]}"


def home_screen_handler(
    composer: HomeScreenComposer,
) -> Callable[[Message, Metadata, float], Awaitable[Message]]:
    """`GetHomeScreen` as a gateway local handler (requests arrive as dynamic messages)."""

    async def handle(request: Message, metadata: Metadata, deadline_s: float) -> Message:
        typed = screens_pb.GetHomeScreenRequest.FromString(request.SerializeToString())
        return await composer.get_home_screen(typed, metadata, deadline_s)

    return handle


def product_screens(channel: Callable[[str], grpc.aio.Channel]) -> dict[str, Any]:
    """The product's screens, keyed by gRPC path, over the mesh's channels."""
    composer = HomeScreenComposer(channel)
    return {"/tips.gateway.v1.ScreensService/GetHomeScreen": home_screen_handler(composer)}

"""The home screen composed at the edge, against real grpc.aio backends.

The recommender answers; profile and integrations are made to fail or stall,
and the screen must come back partial, naming what is missing and why.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from gateway.screens import HomeScreenComposer
from kernel.errors import InvalidArgument
from tips.gateway.v1 import screens_service_pb2 as screens_pb
from tips.integrations.v1 import connection_pb2
from tips.integrations.v1 import integrations_service_pb2 as integrations_pb
from tips.integrations.v1 import integrations_service_pb2_grpc as integrations_grpc
from tips.profile.v1 import profile_pb2
from tips.profile.v1 import profile_service_pb2 as profile_pb
from tips.profile.v1 import profile_service_pb2_grpc as profile_grpc
from tips.recommender.v1 import recommender_service_pb2 as recommender_pb
from tips.recommender.v1 import recommender_service_pb2_grpc as recommender_grpc
from tips.recommender.v1 import tip_pb2

pytestmark = pytest.mark.integration


@dataclass
class Behaviour:
    """How each fake upstream answers in a test."""

    tips: str = "ok"  # ok | fail
    profile: str = "ok"  # ok | fail | stall
    connections: str = "ok"
    seen_metadata: dict[str, str] | None = None


class Recommender(recommender_grpc.RecommenderServiceServicer):
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour

    async def ListTips(self, request: Any, context: Any) -> Any:
        self.behaviour.seen_metadata = dict(context.invocation_metadata())
        if self.behaviour.tips == "fail":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "recommender is down")
        tips = [
            tip_pb2.Tip(name=f"{request.parent}/tips/t{i}", title="Take a 10-minute walk")
            for i in range(request.page_size)
        ]
        return recommender_pb.ListTipsResponse(tips=tips)


class Profile(profile_grpc.ProfileServiceServicer):
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour

    async def GetProfile(self, request: Any, context: Any) -> Any:
        if self.behaviour.profile == "fail":
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "GetProfile is not implemented yet")
        if self.behaviour.profile == "stall":
            await asyncio.sleep(5)
        return profile_pb.GetProfileResponse(
            profile=profile_pb2.Profile(name=request.name, display_name="Ada")
        )


class Integrations(integrations_grpc.IntegrationsServiceServicer):
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour

    async def ListConnections(self, request: Any, context: Any) -> Any:
        if self.behaviour.connections == "fail":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "integrations is down")
        return integrations_pb.ListConnectionsResponse(
            connections=[connection_pb2.Connection(name=f"{request.parent}/connections/c1")]
        )


@pytest.fixture
async def setup() -> AsyncIterator[tuple[HomeScreenComposer, Behaviour]]:
    behaviour = Behaviour()
    server = grpc.aio.server()
    recommender_grpc.add_RecommenderServiceServicer_to_server(Recommender(behaviour), server)
    profile_grpc.add_ProfileServiceServicer_to_server(Profile(behaviour), server)
    integrations_grpc.add_IntegrationsServiceServicer_to_server(Integrations(behaviour), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield HomeScreenComposer(lambda name: channel), behaviour
    finally:
        await channel.close()
        await server.stop(0)


async def home(composer: HomeScreenComposer, deadline_s: float = 2.0) -> Any:
    request = screens_pb.GetHomeScreenRequest(name="users/u1/home", tip_count=2)
    metadata = [("authorization", "Bearer token-of-u1")]
    return (await composer.get_home_screen(request, metadata, deadline_s)).home_screen


async def test_a_complete_screen(setup: tuple[HomeScreenComposer, Behaviour]) -> None:
    composer, behaviour = setup
    screen = await home(composer)
    assert screen.name == "users/u1/home"
    assert [t.name for t in screen.tips] == ["users/u1/tips/t0", "users/u1/tips/t1"]
    assert screen.profile.display_name == "Ada"
    assert [c.name for c in screen.connections] == ["users/u1/connections/c1"]
    assert not screen.missing_parts
    assert behaviour.seen_metadata
    assert behaviour.seen_metadata["authorization"] == "Bearer token-of-u1"


async def test_a_failing_optional_service_leaves_its_part_out(
    setup: tuple[HomeScreenComposer, Behaviour],
) -> None:
    composer, behaviour = setup
    behaviour.profile = "fail"
    screen = await home(composer)
    assert len(screen.tips) == 2 and len(screen.connections) == 1
    assert not screen.HasField("profile")
    [missing] = screen.missing_parts
    assert missing.part == "profile"
    assert missing.status.code == grpc.StatusCode.UNIMPLEMENTED.value[0]
    assert "not implemented" in missing.status.message


async def test_a_stalled_optional_service_does_not_hold_the_screen(
    setup: tuple[HomeScreenComposer, Behaviour],
) -> None:
    composer, behaviour = setup
    behaviour.profile = "stall"
    loop = asyncio.get_running_loop()
    started = loop.time()
    screen = await home(composer, deadline_s=0.5)
    assert loop.time() - started < 1.5
    assert [m.part for m in screen.missing_parts] == ["profile"]
    assert screen.missing_parts[0].status.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert len(screen.tips) == 2


async def test_both_optional_parts_missing(setup: tuple[HomeScreenComposer, Behaviour]) -> None:
    composer, behaviour = setup
    behaviour.profile = behaviour.connections = "fail"
    screen = await home(composer)
    assert sorted(m.part for m in screen.missing_parts) == ["connections", "profile"]


async def test_the_essential_part_fails_the_call(
    setup: tuple[HomeScreenComposer, Behaviour],
) -> None:
    composer, behaviour = setup
    behaviour.tips = "fail"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await home(composer)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("name", "count", "field"),
    [("users/u1", 1, "name"), ("u1/home", 1, "name"), ("users/u1/home", 9, "tip_count")],
)
async def test_bad_requests_name_the_field(
    setup: tuple[HomeScreenComposer, Behaviour], name: str, count: int, field: str
) -> None:
    composer, _ = setup
    request = screens_pb.GetHomeScreenRequest(name=name, tip_count=count)
    with pytest.raises(InvalidArgument) as raised:
        await composer.get_home_screen(request, [], 1.0)
    assert raised.value.violations[0][0] == field

"""NATS with a user per service: a service publishes its own events only, and
reads only the streams of the events it declares it consumes.

A real ``nats-server`` with the permissions ``tips up`` gives the mesh
(``kernel.bus_permissions``): the attack this stops is a forged
``tips.profile.v1.UserDeleted`` published by a process that is not the
profile service, which erased a user's data within seconds.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import pytest

from kernel.bus import Bus, BusError, subject_of
from kernel.bus_permissions import authorization_block, mesh_user, owned_streams
from kernel.settings import SERVICE_NAMES, Settings
from tips.profile.v1 import events_pb2 as profile_events
from tipsmesh.localinfra import LocalNats
from tipsmesh.registry import all_definitions

pytestmark = pytest.mark.integration

PASSWORDS = {"profile": "profile-pw", "events": "events-pw", "gateway": "gateway-pw"}


@pytest.fixture
def secured_nats() -> Iterator[LocalNats]:
    users = [mesh_user(name, pw) for name, pw in PASSWORDS.items()]
    store = Path(tempfile.mkdtemp(prefix="tips-nats-auth-"))
    server = LocalNats(store, authorization=authorization_block(users))
    server.start()
    yield server
    server.stop()
    shutil.rmtree(store, ignore_errors=True)


def _as(server: LocalNats, user: str, password: str | None = None) -> Settings:
    return Settings(nats_url=server.url, nats_user=user, nats_password=password or PASSWORDS[user])


def test_each_service_owns_exactly_the_streams_its_definition_declares() -> None:
    for definition in all_definitions():
        owned = {(s.name, frozenset(s.subjects)) for s in owned_streams(definition.name)}
        declared = {(s.name, frozenset(s.subjects)) for s in definition.streams}
        assert owned == declared, definition.name
    assert {d.name for d in all_definitions()} == set(SERVICE_NAMES)


async def test_only_the_owner_publishes_its_events(secured_nats: LocalNats) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(secured_nats.url, connect_timeout=2, allow_reconnect=False)
    with pytest.raises(BusError, match="Authorization Violation"):
        await Bus.connect(
            _as(secured_nats, "events", "wrong"), "events", attempts=1, connect_timeout=3
        )

    profile = await Bus.connect(_as(secured_nats, "profile"), "profile")
    events = await Bus.connect(_as(secured_nats, "events"), "events")
    gateway = await Bus.connect(_as(secured_nats, "gateway"), "gateway")
    try:
        await profile.ensure_streams(owned_streams("profile"))
        deleted = profile_events.UserDeleted(event_id="e1", user="users/u_1")
        assert (await profile.publish(deleted, msg_id="real-1")).seq == 1

        # The forgeries: refused by the server, nothing reaches the stream.
        forged = profile_events.UserDeleted(event_id="f", user="users/u_victim")
        for impostor in (events, gateway):
            outcomes = await impostor.publish_many(
                [(subject_of(forged), forged.SerializeToString(), {"Nats-Msg-Id": "forged"})],
                ack_timeout=2,
            )
            assert isinstance(outcomes[0], Exception)
        # Nor may they remove or reshape the owner's stream.
        with pytest.raises(Exception):  # noqa: B017 - the server answers with a timeout
            async with asyncio.timeout(5):
                await events._js.delete_stream("TIPS_PROFILE")
        with pytest.raises(Exception):  # noqa: B017
            async with asyncio.timeout(5):
                await events.ensure_streams(owned_streams("profile"))

        # The gateway consumes only TIPS_AUTH (screens_service.proto): it may not
        # read the profile stream, nor open a consumer on it.
        with pytest.raises(Exception):  # noqa: B017 - the server answers with a timeout
            async with asyncio.timeout(5):
                await gateway._js.stream_info("TIPS_PROFILE")
        with pytest.raises(Exception):  # noqa: B017
            async with asyncio.timeout(5):
                await gateway._js.pull_subscribe(
                    subject_of(deleted), durable="gateway-reads", stream="TIPS_PROFILE"
                )
        # Events declares UserDeleted (events_service.proto): a consumer works.
        info = await events._js.stream_info("TIPS_PROFILE")
        assert info.state.messages == 1
        sub = await events._js.pull_subscribe(
            subject_of(deleted), durable="events-reads", stream="TIPS_PROFILE"
        )
        (msg,) = await sub.fetch(1, timeout=5)
        assert profile_events.UserDeleted.FromString(msg.data).user == "users/u_1"
        await msg.ack()
    finally:
        for bus in (profile, events, gateway):
            await bus.close()

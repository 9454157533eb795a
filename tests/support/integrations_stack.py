"""The integrations service with its real neighbours, for the connector tests.

Stand-in providers over real HTTP (tipsmesh/devproviders.py), the real
events service (PostgreSQL + JetStream), a stand-in ProfileInternalService
for the consent gate (tests/support/profile_standin.py); ``ConsentChanged``
is published to the real TIPS_PROFILE stream by the tests. Each test module
gets its own stack (and so its own provider stand-in account) through the
``stack`` fixture of tests/integration/integrations/conftest.py.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import grpc
import httpx
import pytest

from kernel.bus import Bus, streams_for
from kernel.clients import close_channels
from kernel.migrations import migrate
from kernel.server import ServiceServer
from kernel.settings import Settings
from services.events.service import SERVICE as EVENTS
from services.integrations.service import SERVICE as INTEGRATIONS
from services.integrations.settings import IntegrationsSettings
from tests.support.profile_standin import ProfileStandIn
from tests.support.streams import left_as_found
from tests.support.tokens import as_user
from tips.integrations.v1 import connection_pb2
from tips.integrations.v1 import integrations_service_pb2 as pb
from tips.integrations.v1 import integrations_service_pb2_grpc as pb_grpc
from tips.profile.v1 import events_pb2 as profile_events
from tipsmesh.devproviders import ProviderStandIn, provider_settings, serve_standin

STREAMS = ("TIPS_EVENTS", "TIPS_INTEGRATIONS", "TIPS_PROFILE")
S = connection_pb2.ConnectionState


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


# One key ring per test process: every stack shares the session's database,
# and a rewrap test re-seals every stored token, other modules' included.
KEK_RING = {"k1": _key(), "k2": _key()}


@dataclass
class Stack:
    api: pb_grpc.IntegrationsServiceStub
    internal: pb_grpc.IntegrationsInternalServiceStub
    standin: ProviderStandIn
    profile: ProfileStandIn
    db: asyncpg.Connection
    nats_url: str
    settings: IntegrationsSettings
    bus: Bus


def integrations_settings(settings: Settings, **overrides: Any) -> IntegrationsSettings:
    values = settings.model_dump() | {
        "log_format": "text",
        "integrations_kek_ring": dict(KEK_RING),
        "integrations_kek_current": "k1",
        "integrations_page_size": 2,
        "integrations_scheduler_enabled": False,
        "integrations_return_uris": ["tips://connections/callback"],
    }
    return IntegrationsSettings(**(values | overrides))


@contextlib.asynccontextmanager
async def integrations_stack(
    settings: Settings, nats_url: str, database_url: str
) -> AsyncIterator[Stack]:
    """Events and integrations servers, the stand-ins, a DB connection; all stopped after."""
    standin = ProviderStandIn()
    profile = ProfileStandIn()
    durable = f"integrations-consent-t{secrets.token_hex(4)}"
    async with (
        left_as_found(nats_url, STREAMS, [("TIPS_PROFILE", durable)]),
        serve_standin(standin) as base,
    ):
        await profile.start()
        await migrate(settings, [EVENTS, INTEGRATIONS])
        events_server = ServiceServer(
            EVENTS,
            # Events' own consent gate asks the same profile stand-in.
            settings.model_copy(update={"log_format": "text", "profile_addr": profile.address}),
            port=0,
        )
        await events_server.start()
        bus = await Bus.connect(settings, "integrations-test")
        # The profile service owns TIPS_PROFILE; here the test publishes on it.
        await bus.ensure_streams(streams_for(profile_events.ConsentChanged))
        config = integrations_settings(
            settings,
            events_addr=events_server.address,
            profile_addr=profile.address,
            integrations_providers=provider_settings(base),
            integrations_consent_durable=durable,
        )
        server = ServiceServer(INTEGRATIONS, config, port=0)
        db = await asyncpg.connect(database_url)
        try:
            await server.start()
            async with grpc.aio.insecure_channel(server.address) as channel:
                yield Stack(
                    pb_grpc.IntegrationsServiceStub(channel),
                    pb_grpc.IntegrationsInternalServiceStub(channel),
                    standin, profile, db, nats_url, config, bus,
                )  # fmt: skip
        finally:
            await server.stop(grace=0)
            await events_server.stop(grace=0)
            await close_channels()
            await profile.stop()
            await db.close()
            await bus.close()


def md(user: str, *scopes: str) -> tuple[tuple[str, str], ...]:
    """Metadata of a call as ``user``: the access token the gateway would forward."""
    return as_user(user, *scopes)


def new_user() -> str:
    return f"u_{secrets.token_hex(5)}"


async def connect(stack: Stack, user: str, provider: str, connection_id: str) -> str:
    """StartConnection, the browser at the stand-in's consent page, CompleteConnection."""
    started = await stack.api.StartConnection(
        pb.StartConnectionRequest(
            parent=f"users/{user}",
            connection=connection_pb2.Connection(provider=f"providers/{provider}"),
            connection_id=connection_id,
        ),
        metadata=md(user),
    )
    assert started.connection.state == S.CONNECTION_STATE_PENDING_AUTHORIZATION
    query = parse_qs(urlsplit(started.authorization_uri).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"][0]
    async with httpx.AsyncClient() as browser:
        redirect = await browser.get(started.authorization_uri)
    assert redirect.status_code == 302
    callback = parse_qs(urlsplit(redirect.headers["location"]).query)
    assert callback["state"] == query["state"]
    done = await stack.api.CompleteConnection(
        pb.CompleteConnectionRequest(state=callback["state"][0], code=callback["code"][0])
    )
    assert not done.HasField("error"), done.error
    assert done.connection.state == S.CONNECTION_STATE_ACTIVE
    assert "result=ok" in done.redirect_uri
    # The state is one-time.
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await stack.api.CompleteConnection(
            pb.CompleteConnectionRequest(state=callback["state"][0], code=callback["code"][0])
        )
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    name: str = done.connection.name
    return name


async def run_sync(
    stack: Stack, name: str, *, full_resync: bool = False
) -> pb.RunConnectionSyncResponse:
    response: pb.RunConnectionSyncResponse = await stack.internal.RunConnectionSync(
        pb.RunConnectionSyncRequest(name=name, full_resync=full_resync)
    )
    return response


async def stored_ids(stack: Stack, user: str) -> list[str]:
    rows = await stack.db.fetch(
        "SELECT client_signal_id FROM events.signals WHERE user_id = $1", user
    )
    return [r["client_signal_id"] for r in rows]

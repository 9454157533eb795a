"""Zero trust behind the edge: the profile service as an attacker on the same host sees it.

The service runs with mutual TLS (certificates from ``tipsmesh.devcerts``,
as `tips up` issues them). Each attack that succeeded before issue 10 is
tried again: a plaintext call, a TLS call without a client certificate, one
with a certificate from another CA, an internal RPC from a process the proto
does not list, a public RPC from a service instead of the gateway, a forged
``x-tips-user`` header, a token signed with another key, another user's
profile with a valid token. Then the calls that must keep working.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2

from kernel.bus import Bus, streams_for
from kernel.clients import close_channels
from kernel.errors import status_details, unpack_details
from kernel.migrations import migrate
from kernel.server import ServiceServer
from kernel.settings import Settings
from services.profile.service import SERVICE as PROFILE
from services.profile.settings import ProfileSettings
from tests.support.mesh_tls import certs, rogue, tls_channel
from tests.support.streams import left_as_found
from tests.support.tokens import as_user
from tips.auth.v1 import events_pb2 as auth_events
from tips.profile.v1 import profile_service_pb2 as pb
from tips.profile.v1 import profile_service_pb2_grpc as pb_grpc
from tipsmesh.devcerts import MeshIdentity
from tipsmesh.devtokens import TokenIssuer

pytestmark = pytest.mark.integration
__all__ = ["certs", "rogue"]  # the fixtures, from tests/support/mesh_tls.py


@pytest.fixture(scope="module")
async def address(
    settings: Settings, nats_url: str, certs: dict[str, MeshIdentity]
) -> AsyncIterator[str]:
    durable = f"profile-signups-tls{secrets.token_hex(4)}"
    tls = {
        "tls_ca_file": str(certs["profile"].ca_file),
        "tls_cert_file": str(certs["profile"].cert_file),
        "tls_key_file": str(certs["profile"].key_file),
    }
    mine = settings.model_copy(update={"insecure": False, "log_format": "text", **tls})
    async with left_as_found(nats_url, ("TIPS_PROFILE", "TIPS_AUTH"), [("TIPS_AUTH", durable)]):
        await migrate(settings, [PROFILE])
        bus = await Bus.connect(settings, "profile-tls-test")
        await bus.ensure_streams(streams_for(auth_events.UserSignedUp))
        server = ServiceServer(
            PROFILE,
            ProfileSettings(**mine.model_dump(), profile_signup_durable=durable),
            port=0,
        )
        try:
            await server.start()
            yield server.address
        finally:
            await server.stop(grace=0)
            await close_channels()
            await bus.close()


@contextlib.asynccontextmanager
async def _as(
    address: str, who: MeshIdentity | None, ca: Path, server_name: str = "profile"
) -> AsyncIterator[tuple[pb_grpc.ProfileServiceStub, pb_grpc.ProfileInternalServiceStub]]:
    async with tls_channel(address, who, ca, server_name) as ch:
        yield pb_grpc.ProfileServiceStub(ch), pb_grpc.ProfileInternalServiceStub(ch)


def _user() -> str:
    return f"u_{secrets.token_hex(5)}"


def _reason(err: grpc.aio.AioRpcError) -> str:
    details = unpack_details(status_details(err))
    info = [d for d in details if isinstance(d, error_details_pb2.ErrorInfo)]
    return info[0].reason if info else ""


async def _context(internal: pb_grpc.ProfileInternalServiceStub, user: str) -> None:
    await internal.GetUserContext(pb.GetUserContextRequest(user=f"users/{user}"), timeout=10)


async def test_plaintext_and_certificate_less_calls_never_reach_a_handler(
    address: str, certs: dict[str, MeshIdentity], rogue: dict[str, MeshIdentity]
) -> None:
    ca = certs["profile"].ca_file
    async with grpc.aio.insecure_channel(address) as plain:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pb_grpc.ProfileInternalServiceStub(plain).GetUserContext(
                pb.GetUserContextRequest(user="users/u_1"), timeout=10
            )
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    for who in (None, rogue["recommender"]):  # no client certificate; one from another CA
        async with _as(address, who, ca) as (_, internal):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _context(internal, "u_1")
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE, who


async def test_the_client_checks_it_reached_the_service_it_meant(
    address: str, certs: dict[str, MeshIdentity]
) -> None:
    # The profile's certificate does not prove it is auth: the call never leaves.
    async with _as(address, certs["recommender"], certs["profile"].ca_file, "auth") as (_, api):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _context(api, "u_1")
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_an_internal_rpc_answers_only_the_callers_its_proto_lists(
    address: str, certs: dict[str, MeshIdentity]
) -> None:
    ca = certs["profile"].ca_file
    async with _as(address, certs["recommender"], ca) as (_, internal):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _context(internal, _user())  # listed: the handler runs, finds no such user
        assert err.value.code() is grpc.StatusCode.NOT_FOUND
    for name in ("gateway", "operator"):
        async with _as(address, certs[name], ca) as (_, internal):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _context(internal, _user())
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED, name
        assert _reason(err.value) == "CALLER_NOT_ALLOWED"
        assert f"'{name}' may not call" in (err.value.details() or "")


async def test_a_public_rpc_is_the_gateways_to_call(
    address: str, certs: dict[str, MeshIdentity]
) -> None:
    user = _user()
    request = pb.GetProfileRequest(name=f"users/{user}/profile")
    ca = certs["profile"].ca_file
    async with _as(address, certs["recommender"], ca) as (api, _):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.GetProfile(request, metadata=as_user(user), timeout=10)
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    async with _as(address, certs["gateway"], ca) as (api, _):
        reply = await api.GetProfile(request, metadata=as_user(user), timeout=10)
    assert reply.profile.name == f"users/{user}/profile"


async def test_a_user_is_who_a_verified_token_says_never_a_header(
    address: str, certs: dict[str, MeshIdentity]
) -> None:
    victim, mallory = _user(), _user()
    request = pb.GetProfileRequest(name=f"users/{victim}/profile")
    forged_key = TokenIssuer()  # same claims, a key the auth service never published
    try:
        attempts = {
            "IDENTITY_HEADER_REFUSED": (("x-tips-user", victim),),
            "TOKEN_INVALID": (("authorization", f"Bearer {forged_key.mint(victim)}"),),
        }
        async with _as(address, certs["gateway"], certs["profile"].ca_file) as (api, _):
            for reason, metadata in attempts.items():
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await api.GetProfile(request, metadata=metadata, timeout=10)
                assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED, reason
                assert _reason(err.value) == reason
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await api.GetProfile(request, timeout=10)  # no identity at all
            assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await api.GetProfile(request, metadata=as_user(mallory), timeout=10)
            assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
            reply = await api.GetProfile(request, metadata=as_user(victim), timeout=10)
            assert reply.profile.name == f"users/{victim}/profile"
    finally:
        forged_key.jwks.stop()


async def test_any_mesh_process_may_ask_for_health(
    address: str, certs: dict[str, MeshIdentity]
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with tls_channel(address, certs["operator"], certs["profile"].ca_file) as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING

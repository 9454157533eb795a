"""The consent gate of ingest, against the real profile service (in process).

No consent: a steps item is REJECTED (FAILED_PRECONDITION, CONSENT_REQUIRED)
while a focus session in the same batch is accepted. A grant is honoured at
once (the gate confirms with profile's GetUserContext before refusing); a
revocation reaches the gate through ConsentChanged within a bounded wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import nats.js.errors
import pytest
from google.rpc import error_details_pb2

from kernel.bus import Bus, streams_for
from kernel.clients import close_channels
from kernel.errors import unpack_details
from kernel.migrations import migrate
from kernel.server import ServiceServer
from kernel.settings import Settings
from services.events.service import definition
from services.events.settings import EventsSettings
from services.profile.service import SERVICE as PROFILE
from services.profile.settings import ProfileSettings
from tests.integration.events.events_helpers import md, steps, ts, user
from tips.auth.v1 import events_pb2 as auth_events
from tips.events.v1 import events_service_pb2 as ev
from tips.events.v1 import events_service_pb2_grpc as ev_grpc
from tips.events.v1 import signal_pb2
from tips.profile.v1 import consent_pb2
from tips.profile.v1 import profile_service_pb2 as pb
from tips.profile.v1 import profile_service_pb2_grpc as pb_grpc

STREAMS = ("TIPS_PROFILE", "TIPS_AUTH", "TIPS_EVENTS")
FITNESS = "fitness-data-for-tips"
APP = consent_pb2.CONSENT_SOURCE_APP


@dataclass
class Mesh:
    events: ev_grpc.EventsServiceStub
    internal: ev_grpc.EventsInternalServiceStub
    profile: pb_grpc.ProfileServiceStub
    profile_internal: pb_grpc.ProfileInternalServiceStub


async def _streams(bus: Bus) -> set[str]:
    found = set()
    for name in STREAMS:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await bus._js.stream_info(name)
            found.add(name)
    return found


@pytest.fixture(scope="module")
async def mesh(settings: Settings) -> AsyncIterator[Mesh]:
    tag = secrets.token_hex(3)
    events_def = definition(f"events-erasure-c{tag}")
    await migrate(settings, [PROFILE, events_def])
    bus = await Bus.connect(settings, "consent-test")
    before = await _streams(bus)
    # Profile consumes auth's sign-ups; declare TIPS_AUTH as test_profile.py does.
    await bus.ensure_streams(streams_for(auth_events.UserSignedUp))
    base = settings.model_copy(update={"log_format": "text"}).model_dump()
    profile = ServiceServer(
        PROFILE, ProfileSettings(**base, profile_signup_durable=f"profile-signups-c{tag}"), port=0
    )
    await profile.start()
    events = ServiceServer(
        events_def,
        EventsSettings(**{**base, "profile_addr": profile.address}),
        port=0,
    )
    try:
        await events.start()
        async with (
            grpc.aio.insecure_channel(events.address) as ech,
            grpc.aio.insecure_channel(profile.address) as pch,
        ):
            yield Mesh(
                ev_grpc.EventsServiceStub(ech),
                ev_grpc.EventsInternalServiceStub(ech),
                pb_grpc.ProfileServiceStub(pch),
                pb_grpc.ProfileInternalServiceStub(pch),
            )
    finally:
        await events.stop(grace=0)
        await profile.stop(grace=0)
        await close_channels()
        for name in set(STREAMS) - before:
            with contextlib.suppress(Exception):
                await bus.delete_stream(name)
        await bus.close()


def focus() -> signal_pb2.Signal:
    end = datetime.now(UTC)
    return signal_pb2.Signal(
        client_signal_id=secrets.token_hex(8),
        kind=signal_pb2.SIGNAL_KIND_FOCUS_SESSION,
        source=signal_pb2.SIGNAL_SOURCE_PHONE,
        start_time=ts(end - timedelta(minutes=25)),
        end_time=ts(end),
        focus_session=signal_pb2.FocusSessionPayload(completed=True),
    )


async def _new_user(mesh: Mesh) -> str:
    user_id = user()
    await mesh.profile_internal.CreateProfile(pb.CreateProfileRequest(parent=f"users/{user_id}"))
    return user_id


async def _post(
    mesh: Mesh, user_id: str, *signals: signal_pb2.Signal
) -> ev.BatchIngestSignalsResponse:
    request = ev.BatchIngestSignalsRequest(parent=f"users/{user_id}", signals=signals)
    return await mesh.events.BatchIngestSignals(request, metadata=md(user_id))


def _assert_consent_required(result: ev.IngestResult) -> None:
    assert result.outcome == ev.INGEST_OUTCOME_REJECTED, result
    assert result.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0], result
    [info] = [d for d in unpack_details(result.error) if isinstance(d, error_details_pb2.ErrorInfo)]
    assert info.reason == "CONSENT_REQUIRED" and info.metadata["consent"] == FITNESS, info
    # The message says what to do about it, not only what is missing.
    assert f"/v1/users/me/consents/{FITNESS}:grant" in result.error.message, result.error.message


async def test_no_consent_rejects_steps_and_accepts_focus_in_the_same_batch(mesh: Mesh) -> None:
    user_id = await _new_user(mesh)
    response = await _post(mesh, user_id, steps(100), focus())
    _assert_consent_required(response.results[0])
    assert response.results[1].outcome == ev.INGEST_OUTCOME_ACCEPTED, response
    assert (response.accepted_count, response.rejected_count) == (1, 1)


async def test_connector_signals_pass_the_same_gate(mesh: Mesh) -> None:
    user_id = await _new_user(mesh)
    signal = steps(100)
    signal.source = signal_pb2.SIGNAL_SOURCE_CONNECTOR
    signal.connection = f"users/{user_id}/connections/c1"
    request = ev.BatchIngestConnectorSignalsRequest(
        signals=[ev.ConnectorSignal(parent=f"users/{user_id}", signal=signal)]
    )
    response = await mesh.internal.BatchIngestConnectorSignals(request)
    _assert_consent_required(response.results[0])


async def test_grant_is_honoured_at_once_and_revocation_within_a_bounded_wait(
    mesh: Mesh,
) -> None:
    user_id = await _new_user(mesh)
    name = f"users/{user_id}/consents/{FITNESS}"
    _assert_consent_required((await _post(mesh, user_id, steps(1))).results[0])

    grant = pb.GrantConsentRequest(name=name, text_version="2025-01-15", source=APP)
    await mesh.profile.GrantConsent(grant, metadata=md(user_id))
    # At once: before the ConsentChanged consumer can have caught up, profile confirms.
    accepted = await _post(mesh, user_id, steps(2))
    assert accepted.results[0].outcome == ev.INGEST_OUTCOME_ACCEPTED, accepted

    revoke = pb.RevokeConsentRequest(name=name, source=APP)
    await mesh.profile.RevokeConsent(revoke, metadata=md(user_id))
    deadline = asyncio.get_running_loop().time() + 15.0
    while True:
        result = (await _post(mesh, user_id, steps(3))).results[0]
        if result.outcome == ev.INGEST_OUTCOME_REJECTED:
            break
        assert asyncio.get_running_loop().time() < deadline, "revocation not applied in 15 s"
        await asyncio.sleep(0.2)
    _assert_consent_required(result)

"""The notifier with the real profile service, FCM and SMTP stand-ins, a DB connection."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc

from kernel.bus import Bus, streams_for
from kernel.clients import close_channels
from kernel.migrations import migrate
from kernel.server import ServiceServer
from kernel.service import ServiceDefinition
from kernel.settings import Settings
from services.notifier.service import SERVICE as NOTIFIER
from services.notifier.settings import NotifierSettings
from services.profile.service import SERVICE as PROFILE
from services.profile.settings import ProfileSettings
from tests.support.push_standins import PROJECT, FcmStandIn, SmtpStandIn, serve_fcm
from tests.support.streams import left_as_found
from tips.auth.v1 import events_pb2 as auth_events
from tips.notifier.v1 import notifier_service_pb2_grpc as pb_grpc
from tips.profile.v1 import profile_service_pb2_grpc as ppb_grpc

STREAMS = ("TIPS_PROFILE", "TIPS_AUTH", "TIPS_NOTIFIER")
KEK = {"t1": "A" * 43}  # base64url of 32 zero-ish bytes, test only


@dataclass
class NotifierStack:
    api: pb_grpc.NotifierServiceStub
    internal: pb_grpc.NotifierInternalServiceStub
    profile: ppb_grpc.ProfileServiceStub
    profile_internal: ppb_grpc.ProfileInternalServiceStub
    fcm: FcmStandIn
    smtp: SmtpStandIn
    db: asyncpg.Connection
    bus: Bus  # the test's own connection, publishing as the auth service
    settings: NotifierSettings
    database_url: str
    nats_url: str
    clock: Any = None  # the notifier's clock, when the test moves time


def notifier_settings(
    settings: Settings, fcm_url: str, fcm: FcmStandIn, **extra: Any
) -> NotifierSettings:
    values: dict[str, Any] = {
        **settings.model_copy(update={"log_format": "text"}).model_dump(),
        "notifier_kek_ring": KEK,
        "notifier_kek_current": "t1",
        "notifier_fcm_base_url": fcm_url,
        "notifier_fcm_project_id": PROJECT,
        "notifier_fcm_credentials": fcm.credentials(),
        "notifier_smtp_security": "none",
        "notifier_smtp_from": "Tips <tips@example.com>",
        "notifier_worker_poll_seconds": 0.2,
        "notifier_erasure_durable": f"notifier-erasure-t{secrets.token_hex(3)}",
        "notifier_profile_durable": f"notifier-profiles-t{secrets.token_hex(3)}",
        **extra,
    }
    return NotifierSettings(**values)


@contextlib.asynccontextmanager
async def notifier_stack(
    settings: Settings,
    *,
    definition: ServiceDefinition = NOTIFIER,
    clock: Any = None,
    **notifier_extra: Any,
) -> AsyncIterator[NotifierStack]:
    """Profile and notifier servers on ``settings``' database and NATS; all stopped after."""
    signups = f"profile-signups-t{secrets.token_hex(4)}"
    async with left_as_found(settings.nats_url, STREAMS, [("TIPS_AUTH", signups)]):
        await migrate(settings, [PROFILE, definition])
        profile = ServiceServer(
            PROFILE,
            ProfileSettings(
                **settings.model_copy(update={"log_format": "text"}).model_dump(),
                profile_signup_durable=signups,
            ),
            port=0,
        )
        bus = await Bus.connect(settings, "notifier-test")
        await bus.ensure_streams(streams_for(auth_events.UserSignedUp))
        fcm, smtp = FcmStandIn(), SmtpStandIn()
        smtp.start()
        db = await asyncpg.connect(settings.database_url)
        try:
            async with serve_fcm(fcm) as fcm_url:
                await profile.start()
                svc_settings = notifier_settings(
                    settings.model_copy(update={"profile_addr": profile.address}),
                    fcm_url,
                    fcm,
                    notifier_smtp_host="127.0.0.1",
                    notifier_smtp_port=smtp.port,
                    **notifier_extra,
                )
                notifier = ServiceServer(definition, svc_settings, port=0)
                try:
                    await notifier.start()
                    async with (
                        grpc.aio.insecure_channel(notifier.address) as channel,
                        grpc.aio.insecure_channel(profile.address) as profile_channel,
                    ):
                        yield NotifierStack(
                            pb_grpc.NotifierServiceStub(channel),
                            pb_grpc.NotifierInternalServiceStub(channel),
                            ppb_grpc.ProfileServiceStub(profile_channel),
                            ppb_grpc.ProfileInternalServiceStub(profile_channel),
                            fcm, smtp, db, bus, svc_settings, settings.database_url,
                            settings.nats_url, clock,
                        )  # fmt: skip
                finally:
                    await notifier.stop(grace=0)
                    await profile.stop(grace=0)
        finally:
            await close_channels()
            await db.close()
            smtp.stop()
            await bus.close()

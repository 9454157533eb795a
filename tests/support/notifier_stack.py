"""The notifier with the real profile service, FCM and SMTP stand-ins, a DB connection."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
from google.protobuf.field_mask_pb2 import FieldMask

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
from tests.support.tokens import as_user
from tests.support.waiting import eventually
from tips.auth.v1 import events_pb2 as auth_events
from tips.notifier.v1 import notifier_service_pb2_grpc as pb_grpc
from tips.profile.v1 import consent_pb2, profile_pb2
from tips.profile.v1 import profile_service_pb2 as ppb
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


def md(user: str) -> tuple[tuple[str, str], ...]:
    """Metadata of a call as ``user``: the access token the gateway would forward."""
    return as_user(user)


async def new_user(
    stack: NotifierStack,
    *,
    zone: str = "UTC",
    push: bool = True,
    email: bool = False,
    consent: bool = True,
    quiet: list[profile_pb2.QuietHoursWindow] | None = None,
    cap: int = 0,
    digest: profile_pb2.NotificationDigest | None = None,
) -> str:
    """A user with a profile (zone, channels, quiet hours, cap, digest) and, with
    ``consent``, the consents of the channels enabled."""
    user = f"u_{secrets.token_hex(5)}"
    if email:  # the profile's email comes from the sign-up's verified address
        await stack.bus.publish(
            auth_events.UserSignedUp(
                event_id=secrets.token_hex(8),
                user=f"users/{user}",
                identity=f"users/{user}/identities/g1",
                email=f"{user}@example.com",
                email_verified=True,
            ),
            msg_id=secrets.token_hex(8),
        )
        await eventually(
            lambda: stack.profile.GetProfile(
                ppb.GetProfileRequest(name=f"users/{user}/profile"), metadata=md(user)
            ),
            lambda got: got.profile.email != "",
        )
    profile = profile_pb2.Profile(
        name=f"users/{user}/profile",
        time_zone=zone,
        channels=profile_pb2.NotificationChannels(push_enabled=push, email_enabled=email),
        quiet_hours=quiet or [],
        daily_tip_cap=cap,
    )
    paths = ["time_zone", "channels", "quiet_hours", "daily_tip_cap"]
    if digest is not None:
        profile.digest.CopyFrom(digest)
        paths.append("digest")
    await stack.profile.UpdateProfile(
        ppb.UpdateProfileRequest(profile=profile, update_mask=FieldMask(paths=paths)),
        metadata=md(user),
    )
    if consent:
        for purpose, wanted in (("push-notifications", push), ("email-notifications", email)):
            if wanted:
                await stack.profile.GrantConsent(
                    ppb.GrantConsentRequest(
                        name=f"users/{user}/consents/{purpose}",
                        text_version="v1",
                        source=consent_pb2.CONSENT_SOURCE_APP,
                    ),
                    metadata=md(user),
                )
    return user

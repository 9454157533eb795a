"""The auth service in process against real PostgreSQL and NATS, with two
local OIDC issuers standing in for Google and Apple (tests/support/oidc_issuer.py).

Test modules import the ``auth`` fixture from here.
"""

from __future__ import annotations

import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import nats
import nats.js.errors
import pytest
from pydantic import SecretStr

from kernel.clients import close_channels
from kernel.migrations import migrate
from kernel.server import ServiceServer
from kernel.settings import Settings
from services.auth.crypto import generate_kek
from services.auth.service import SERVICE
from services.auth.settings import AuthSettings
from tests.support.tokens import as_user
from tips.auth.v1 import auth_service_pb2 as pb
from tips.auth.v1 import auth_service_pb2_grpc as pb_grpc
from tips.auth.v1 import identity_pb2, session_pb2
from tipsmesh.devidp import OidcIssuer

GOOGLE = identity_pb2.IDENTITY_PROVIDER_GOOGLE
APPLE = identity_pb2.IDENTITY_PROVIDER_APPLE
FAILURE_LIMIT = 5
REDIRECT_URI = "https://app.tips.test/auth/callback"
# One key-encryption key for the whole test session: every module reads the same keys.
KEK = generate_kek()


@dataclass
class AuthMesh:
    google: OidcIssuer
    apple: OidcIssuer
    server: ServiceServer
    settings: AuthSettings
    stub: pb_grpc.AuthServiceStub
    internal: pb_grpc.AuthInternalServiceStub
    db: asyncpg.Connection

    def client(self) -> tuple[tuple[str, str], ...]:
        """Metadata of a fresh client address, so tests do not share failure counters."""
        ip = f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{secrets.randbelow(250)}"
        return (("x-forwarded-for", f"203.0.113.9, {ip}"),)

    def as_user(self, user: str, session: str | None = None) -> tuple[tuple[str, str], ...]:
        return as_user(user, session=session)

    async def sign_in(
        self,
        issuer: OidcIssuer | None = None,
        subject: str | None = None,
        **kwargs: Any,
    ) -> pb.SignInResponse:
        issuer = issuer or self.google
        provider = GOOGLE if issuer is self.google else APPLE
        raw = secrets.token_urlsafe(16)
        nonce = raw if provider == GOOGLE else _sha256_hex(raw)
        token = issuer.mint(subject or uuid.uuid4().hex, nonce=nonce, **kwargs)
        response: pb.SignInResponse = await self.stub.SignIn(
            pb.SignInRequest(
                provider=provider,
                id_token=token,
                nonce=raw,
                device_name="Test phone",
                platform=session_pb2.PLATFORM_IOS,
            ),
            metadata=self.client(),
            timeout=10,
        )
        return response


def _sha256_hex(value: str) -> str:
    import hashlib

    return hashlib.sha256(value.encode()).hexdigest()


async def _streams(nats_url: str) -> set[str]:
    nc = await nats.connect(nats_url, connect_timeout=2, max_reconnect_attempts=1)
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await nc.jetstream().stream_info("TIPS_AUTH")
            return {"TIPS_AUTH"}
        return set()
    finally:
        await nc.close()


@pytest.fixture(scope="module")
async def auth(settings: Settings, database_url: str, nats_url: str) -> AsyncIterator[AuthMesh]:
    google = await OidcIssuer("google", ["google-ios", "google-web"]).start()
    apple = await OidcIssuer("apple", ["com.tips.app", "com.tips.web"]).start()
    existed = await _streams(nats_url)
    auth_settings = AuthSettings(
        **(settings.model_dump() | {"log_format": "text"}),
        auth_google_issuer=google.issuer,
        auth_google_client_ids=google.client_ids,
        auth_google_web_client_id="google-web",
        auth_apple_issuer=apple.issuer,
        auth_apple_client_ids=apple.client_ids,
        auth_apple_web_client_id="com.tips.web",
        auth_web_redirect_uris=[REDIRECT_URI],
        auth_key_encryption_key=SecretStr(KEK),
        auth_signin_failure_limit=FAILURE_LIMIT,
        auth_signin_failure_window_seconds=60,
        auth_provider_jwks_min_refresh_seconds=0.5,
        auth_signing_key_reload_seconds=0.5,
    )
    await migrate(auth_settings, [SERVICE])
    server = ServiceServer(SERVICE, auth_settings, port=0)
    await server.start()
    db = await asyncpg.connect(database_url)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            yield AuthMesh(
                google,
                apple,
                server,
                auth_settings,
                pb_grpc.AuthServiceStub(channel),
                pb_grpc.AuthInternalServiceStub(channel),
                db,
            )
    finally:
        await server.stop(grace=0)
        await close_channels()
        await db.close()
        await google.stop()
        await apple.stop()
        if "TIPS_AUTH" not in existed:
            nc = await nats.connect(nats_url, connect_timeout=2, max_reconnect_attempts=1)
            with contextlib.suppress(Exception):
                await nc.jetstream().delete_stream("TIPS_AUTH")
            await nc.close()

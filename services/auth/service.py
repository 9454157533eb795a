"""How the kernel runs the auth service.

On start: the signing keys are loaded (the first start creates one), the
provider clients are made, and background tasks run the outbox relay, the
erasure consumer, and prune expired nonces, web sign-ins and failure counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

from kernel.bus import streams_for
from kernel.db import Database
from kernel.outbox import OutboxRelay
from kernel.service import Binding, Runtime, ServiceDefinition, bind
from kernel.settings import Settings
from services.auth import store
from services.auth.core import AuthCore
from services.auth.crypto import Envelope
from services.auth.erasure import eraser
from services.auth.providers import Providers
from services.auth.ratelimit import FailureLimiter
from services.auth.servicer import AuthInternalServicer, AuthServicer
from services.auth.settings import AuthSettings, load_auth_settings
from services.auth.signing import KeyRing
from tips.auth.v1 import auth_service_pb2, auth_service_pb2_grpc, events_pb2

log = logging.getLogger(__name__)
PRUNE_INTERVAL_SECONDS = 60.0


def key_ring(db: Database, settings: AuthSettings, envelope: Envelope) -> KeyRing:
    return KeyRing(
        db,
        envelope,
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        reload_seconds=settings.auth_signing_key_reload_seconds,
        leeway_seconds=settings.jwt_leeway_seconds,
    )


def envelope_of(settings: AuthSettings) -> Envelope:
    return Envelope(
        settings.auth_key_encryption_key.get_secret_value(), settings.auth_key_encryption_key_id
    )


async def _prune_forever(core: AuthCore, limiter: FailureLimiter) -> None:
    while True:
        await asyncio.sleep(PRUNE_INTERVAL_SECONDS)
        try:
            await core.prune()
            await limiter.prune()
        except Exception as exc:  # retried next round; never kill the task
            log.warning("auth prune failed", extra={"error": type(exc).__name__})


async def build(runtime: Runtime) -> Sequence[Binding]:
    if runtime.db is None or runtime.bus is None:
        raise RuntimeError("the auth service needs the database and the bus")
    settings = load_auth_settings(runtime.settings)
    envelope = envelope_of(settings)
    keys = key_ring(runtime.db, settings, envelope)
    await keys.load()
    providers = Providers(settings)
    runtime.cleanups.append(providers.close)
    core = AuthCore(runtime.db, settings, keys, providers, envelope)
    limiter = FailureLimiter(
        runtime.db,
        settings.auth_signin_failure_limit,
        settings.auth_signin_failure_window_seconds,
    )
    runtime.spawn(OutboxRelay(runtime.db, runtime.bus, store.outbox).run())
    runtime.spawn(_prune_forever(core, limiter))
    # Deleted users: sessions revoked, rows gone (docs/erasure.md).
    runtime.spawn(eraser(runtime.db, core).run(runtime.bus))
    return [
        bind(AuthServicer(core, limiter), auth_service_pb2_grpc, auth_service_pb2, "AuthService"),
        bind(
            AuthInternalServicer(core),
            auth_service_pb2_grpc,
            auth_service_pb2,
            "AuthInternalService",
        ),
    ]


async def rotate_signing_keys(settings: Settings, grace_seconds: float | None = None) -> str:
    """Rotate the access-token signing key (``tips auth rotate-keys``); the new kid.

    Connects as the auth service's role. A running auth service picks the new
    key up within ``auth_signing_key_reload_seconds``; the previous key stays
    in the JWK Set for the grace period.
    """
    auth_settings = load_auth_settings(settings)
    envelope = envelope_of(auth_settings)
    db = await Database.connect(auth_settings, "auth", attempts=3)
    try:
        keys = key_ring(db, auth_settings, envelope)
        # The first key must exist to be retired; creating it is harmless.
        await keys.load()
        core = AuthCore(db, auth_settings, keys, _NoProviders(), envelope)  # type: ignore[arg-type]
        return await core.rotate_keys(grace_seconds)
    finally:
        with contextlib.suppress(Exception):
            await db.close()


class _NoProviders:
    """Rotation needs no identity provider."""

    def get(self, provider: int) -> None:
        return None


SERVICE = ServiceDefinition(
    name="auth",
    build=build,
    migrations_dir=Path(__file__).parent / "migrations",
    streams=streams_for(
        events_pb2.UserSignedUp, events_pb2.SessionRevoked, events_pb2.IdentityLinked
    ),
)

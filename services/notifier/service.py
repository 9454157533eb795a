"""How the kernel runs the notifier service.

On start: the push-token key ring and the FCM key are checked, then the
outbox relay (NotificationSent/Suppressed/Failed to TIPS_NOTIFIER), the
erasure consumer (``UserDeleted``), the digest's ``ProfileChanged`` consumer
and the delivery worker (which also builds the daily digests) are spawned.
Push is on when ``TIPS_NOTIFIER_FCM_PROJECT_ID`` is set, email when
``TIPS_NOTIFIER_SMTP_HOST`` is; a notification for a channel that is off
fails with FAILED_PRECONDITION (docs/notifier.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import httpx

from kernel.bus import streams_for
from kernel.consumers import consume_forever
from kernel.outbox import OutboxRelay
from kernel.service import Binding, Runtime, ServiceDefinition, bind
from kernel.settings import SettingsError
from services.notifier import store
from services.notifier.clock import Clock, system_clock
from services.notifier.core.devices import Devices
from services.notifier.core.notifications import Log
from services.notifier.core.sending import Sender
from services.notifier.erasure import eraser
from services.notifier.fcm import FcmConfigError, FcmSender, ServiceAccountTokens
from services.notifier.mail import SmtpSender
from services.notifier.servicer import NotifierInternalServicer, NotifierServicer
from services.notifier.settings import notifier_settings
from services.notifier.worker import Worker
from tips.notifier.v1 import events_pb2, notifier_service_pb2, notifier_service_pb2_grpc
from tips.profile.v1 import events_pb2 as profile_events


async def build(runtime: Runtime, *, clock: Clock = system_clock) -> Sequence[Binding]:
    """The servicers, wired to what the runtime provides (``clock``: tests move time)."""
    if runtime.db is None or runtime.bus is None:
        raise RuntimeError("the notifier service needs the database and the bus")
    settings = notifier_settings(runtime.settings)
    registry = Devices(runtime.db, settings.key_ring())
    http = httpx.AsyncClient(timeout=settings.notifier_http_timeout_seconds, follow_redirects=False)
    runtime.cleanups.append(http.aclose)
    push = None
    if settings.notifier_fcm_project_id:
        try:
            push = FcmSender(settings, http, ServiceAccountTokens(settings, http))
        except FcmConfigError as exc:
            raise SettingsError(f"invalid configuration: {exc}") from None
    mail = SmtpSender(settings) if settings.notifier_smtp_host else None
    worker = Worker(runtime.db, settings, registry, push, mail, clock)
    runtime.spawn(OutboxRelay(runtime.db, runtime.bus, store.outbox).run())
    # Deleted users: devices and notifications go (docs/erasure.md).
    runtime.spawn(eraser(runtime.db, settings.notifier_erasure_durable).run(runtime.bus))
    # Digest or time zone changed: held tips move to the new digest time.
    runtime.spawn(
        consume_forever(
            runtime.bus,
            profile_events.ProfileChanged,
            durable=settings.notifier_profile_durable,
            handler=worker.digests.on_profile_changed,
        )
    )
    if settings.notifier_worker_enabled:
        runtime.spawn(worker.run())
    sender = Sender(runtime.db, settings, worker.wake, clock)
    pb, pb_grpc = notifier_service_pb2, notifier_service_pb2_grpc
    return [
        bind(NotifierServicer(registry, Log(runtime.db)), pb_grpc, pb, "NotifierService"),
        bind(NotifierInternalServicer(sender), pb_grpc, pb, "NotifierInternalService"),
    ]


SERVICE = ServiceDefinition(
    name="notifier",
    build=build,
    migrations_dir=Path(__file__).parent / "migrations",
    streams=streams_for(
        events_pb2.NotificationSent,
        events_pb2.NotificationSuppressed,
        events_pb2.NotificationFailed,
    ),
)

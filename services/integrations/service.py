"""How the kernel runs the integrations service.

On start: the key ring is checked, the outbox relay (``ConnectionChanged``,
``SyncCompleted`` to ``TIPS_INTEGRATIONS``), the ``ConsentChanged`` and
``UserDeleted`` (erasure) consumers and the sync scheduler are spawned.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import httpx

from kernel.bus import streams_for
from kernel.outbox import OutboxRelay
from kernel.service import Binding, Runtime, ServiceDefinition, bind
from kernel.settings import SettingsError
from services.integrations import store
from services.integrations.consent import ConsentGate, ConsentListener
from services.integrations.core.connections import Connections
from services.integrations.core.sync import SyncEngine
from services.integrations.erasure import eraser
from services.integrations.ingest import EventsSink
from services.integrations.rewrap import key_ring
from services.integrations.scheduler import Scheduler
from services.integrations.servicer import IntegrationsInternalServicer, IntegrationsServicer
from services.integrations.settings import load_integrations_settings
from services.integrations.vault import VaultError
from tips.integrations.v1 import events_pb2, integrations_service_pb2, integrations_service_pb2_grpc


async def build(runtime: Runtime) -> Sequence[Binding]:
    """The servicers, wired to what the runtime provides."""
    if runtime.db is None or runtime.bus is None:
        raise RuntimeError("the integrations service needs the database and the bus")
    settings = load_integrations_settings(runtime.settings)
    try:
        ring = key_ring(settings)
    except VaultError as exc:
        raise SettingsError(f"invalid configuration: TIPS_INTEGRATIONS_KEK_*: {exc}") from None
    http = httpx.AsyncClient(
        timeout=settings.integrations_http_timeout_seconds, follow_redirects=False
    )
    runtime.cleanups.append(http.aclose)
    gate = ConsentGate(settings)
    engine = SyncEngine(runtime.db, settings, ring, gate, EventsSink(settings), http)
    scheduler = Scheduler(runtime.db, engine, settings)
    wake = scheduler.wake if settings.integrations_scheduler_enabled else (lambda: None)
    listener = ConsentListener(runtime.db, gate, settings.integrations_consent_durable, wake)
    runtime.spawn(OutboxRelay(runtime.db, runtime.bus, store.outbox).run())
    runtime.spawn(listener.run(runtime.bus))
    # Deleted users: connections, vault records and sync state go (docs/erasure.md).
    runtime.spawn(eraser(runtime.db, gate).run(runtime.bus))
    if settings.integrations_scheduler_enabled:
        runtime.spawn(scheduler.run())
    connections = Connections(runtime.db, settings, ring, http, gate, engine, wake)
    return [
        bind(
            IntegrationsServicer(connections),
            integrations_service_pb2_grpc,
            integrations_service_pb2,
            "IntegrationsService",
        ),
        bind(
            IntegrationsInternalServicer(connections),
            integrations_service_pb2_grpc,
            integrations_service_pb2,
            "IntegrationsInternalService",
        ),
    ]


SERVICE = ServiceDefinition(
    name="integrations",
    build=build,
    migrations_dir=Path(__file__).parent / "migrations",
    streams=streams_for(events_pb2.ConnectionChanged, events_pb2.SyncCompleted),
)

"""The events service: ingress and durable store of signals.

Accepted signals are stored with a ``SignalRecorded`` outbox row in the same
transaction; the kernel's ``OutboxRelay``, in a child process by default
(``relay_process``), publishes them to the ``TIPS_EVENTS`` stream (retention
from ``EventsSettings``). Ingest is admitted by an ``Ingress`` that refuses
with a retry hint when the store or the bus falls behind; ``erasure``
deletes a user's signals on ``UserDeleted``. See docs/durable-log.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kernel.bus import StreamSpec, streams_for
from kernel.service import Binding, Runtime, ServiceDefinition, bind
from services.events.backpressure import Ingress
from services.events.consent import DURABLE as CONSENT_DURABLE
from services.events.consent import ConsentGate, ConsentModel
from services.events.core import Signals
from services.events.erasure import DURABLE, eraser
from services.events.relay_process import RelaySupervisor, make_relay
from services.events.servicer import EventsInternalServicer, EventsServicer
from services.events.settings import EventsSettings, load_events_settings
from tips.events.v1 import events_pb2, events_service_pb2, events_service_pb2_grpc


def stream_specs(settings: EventsSettings) -> list[StreamSpec]:
    """TIPS_EVENTS with the retention and duplicate window of ``settings``."""
    return streams_for(
        events_pb2.SignalRecorded,
        events_pb2.SignalsPurged,
        max_age=settings.events_stream_max_age_seconds,
        max_bytes=settings.events_stream_max_bytes,
        duplicate_window=settings.events_stream_duplicate_window_seconds,
    )


def definition(
    erasure_durable: str = DURABLE, consent_durable: str | None = None
) -> ServiceDefinition:
    """The service; ``erasure_durable`` names its UserDeleted consumer (tests vary it).

    ``consent_durable`` names its ConsentChanged consumer; by default it follows
    a varied ``erasure_durable`` so tests get distinct consumers of both.
    """
    if consent_durable is None:
        consent_durable = (
            CONSENT_DURABLE if erasure_durable == DURABLE else f"{erasure_durable}-consents"
        )

    async def build(runtime: Runtime) -> Sequence[Binding]:
        if runtime.db is None or runtime.bus is None:
            raise RuntimeError("the events service needs the database and the bus")
        settings = load_events_settings(runtime.settings)
        # The kernel declared the stream with defaults; apply the configured limits.
        await runtime.bus.ensure_streams(stream_specs(settings))
        ingress = Ingress(runtime.db, settings)
        await ingress.measure()
        runtime.spawn(ingress.monitor())
        if settings.events_relay_process:
            runtime.spawn(RelaySupervisor(settings).run())
        else:
            runtime.spawn(make_relay(runtime.db, runtime.bus, settings).run())
        runtime.spawn(eraser(runtime.db, erasure_durable).run(runtime.bus))
        gate: ConsentGate | None = None
        if settings.events_consent_gate:
            model = ConsentModel(runtime.db, consent_durable)
            await model.load()
            gate = ConsentGate(model, settings)
            runtime.spawn(model.run(runtime.bus))
            runtime.spawn(model.reload_every(settings.events_consent_reload_seconds))
        signals = Signals(runtime.db, ingress, settings, gate)
        return [
            bind(
                EventsServicer(signals),
                events_service_pb2_grpc,
                events_service_pb2,
                "EventsService",
            ),
            bind(
                EventsInternalServicer(signals),
                events_service_pb2_grpc,
                events_service_pb2,
                "EventsInternalService",
            ),
        ]

    return ServiceDefinition(
        name="events",
        build=build,
        migrations_dir=Path(__file__).parent / "migrations",
        streams=streams_for(events_pb2.SignalRecorded, events_pb2.SignalsPurged),
    )


SERVICE = definition()

"""The events service: ingress and durable store of signals.

Accepted signals are stored with a ``SignalRecorded`` outbox row in the same
transaction; an ``OutboxRelay`` publishes them to the ``TIPS_EVENTS`` stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kernel.bus import streams_for
from kernel.outbox import OutboxRelay
from kernel.service import Binding, Runtime, ServiceDefinition, bind
from services.events import store
from services.events.servicer import EventsInternalServicer, EventsServicer
from tips.events.v1 import events_pb2, events_service_pb2, events_service_pb2_grpc


async def build(runtime: Runtime) -> Sequence[Binding]:
    if runtime.db is None or runtime.bus is None:
        raise RuntimeError("the events service needs the database and the bus")
    runtime.spawn(OutboxRelay(runtime.db, runtime.bus, store.outbox).run())
    return [
        bind(
            EventsServicer(runtime.db),
            events_service_pb2_grpc,
            events_service_pb2,
            "EventsService",
        ),
        bind(
            EventsInternalServicer(),
            events_service_pb2_grpc,
            events_service_pb2,
            "EventsInternalService",
        ),
    ]


SERVICE = ServiceDefinition(
    name="events",
    build=build,
    migrations_dir=Path(__file__).parent / "migrations",
    streams=streams_for(events_pb2.SignalRecorded, events_pb2.SignalsPurged),
)

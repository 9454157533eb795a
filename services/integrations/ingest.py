"""Where connector signals go: the events service, in one small function.

``EventsInternalService.BatchIngestConnectorSignals`` takes items of many
users per call; while an events build still answers it UNIMPLEMENTED, the
per-user ``EventsService.BatchIngestSignals`` (acting as the user) is used
instead. ``integrations_ingest_via`` picks the first choice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from kernel.clients import channel
from kernel.identity import Caller, acting_as
from kernel.names import user_name
from services.integrations.settings import IntegrationsSettings
from tips.events.v1 import events_service_pb2 as ev
from tips.events.v1 import events_service_pb2_grpc as ev_grpc
from tips.events.v1 import signal_pb2

log = logging.getLogger(__name__)
MAX_PER_CALL = 500  # the smaller of the two RPCs' limits


@dataclass
class IngestCounts:
    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0

    def add(self, other: IngestCounts) -> None:
        self.accepted += other.accepted
        self.duplicate += other.duplicate
        self.rejected += other.rejected


class EventsSink:
    def __init__(self, settings: IntegrationsSettings) -> None:
        self.settings = settings
        self.via = settings.integrations_ingest_via

    async def send(
        self, user_id: str, signals: Sequence[signal_pb2.Signal], sync_id: str
    ) -> IngestCounts:
        total = IngestCounts()
        for start in range(0, len(signals), MAX_PER_CALL):
            total.add(await self._send(user_id, signals[start : start + MAX_PER_CALL], sync_id))
        return total

    async def _send(
        self, user_id: str, signals: Sequence[signal_pb2.Signal], sync_id: str
    ) -> IngestCounts:
        if self.via == "internal":
            try:
                return await self._internal(user_id, signals, sync_id)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                log.warning("BatchIngestConnectorSignals unimplemented; ingesting per user")
                self.via = "per_user"
        return await self._per_user(user_id, signals)

    async def _internal(
        self, user_id: str, signals: Sequence[signal_pb2.Signal], sync_id: str
    ) -> IngestCounts:
        stub = ev_grpc.EventsInternalServiceStub(channel(self.settings, "events"))
        parent = user_name(user_id)
        response = await stub.BatchIngestConnectorSignals(
            ev.BatchIngestConnectorSignalsRequest(
                signals=[ev.ConnectorSignal(parent=parent, signal=s) for s in signals],
                sync_id=sync_id,
            )
        )
        return IngestCounts(
            response.accepted_count, response.duplicate_count, response.rejected_count
        )

    async def _per_user(self, user_id: str, signals: Sequence[signal_pb2.Signal]) -> IngestCounts:
        stub = ev_grpc.EventsServiceStub(channel(self.settings, "events"))
        with acting_as(Caller(user=user_id)):  # the channel sends x-tips-user
            response = await stub.BatchIngestSignals(
                ev.BatchIngestSignalsRequest(parent=user_name(user_id), signals=list(signals))
            )
        return IngestCounts(
            response.accepted_count, response.duplicate_count, response.rejected_count
        )

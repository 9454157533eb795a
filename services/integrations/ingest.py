"""Where connector signals go: the events service, in one small function.

``EventsInternalService.BatchIngestConnectorSignals`` takes items of many
users per call. Integrations calls it as itself (its mesh certificate; the
RPC lists it as a caller): a background sync has no user token to act with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kernel.clients import channel
from kernel.names import user_name
from services.integrations.settings import IntegrationsSettings
from tips.events.v1 import events_service_pb2 as ev
from tips.events.v1 import events_service_pb2_grpc as ev_grpc
from tips.events.v1 import signal_pb2

MAX_PER_CALL = 500  # BatchIngestConnectorSignals takes at most 1000 items


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

"""gRPC servicers of the events service: parse, check the caller, call ``core``, answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from kernel.identity import require_owner, require_user_parent
from services.events import domain, selectors
from services.events.core import Signals
from tips.events.v1 import events_service_pb2 as pb
from tips.events.v1 import events_service_pb2_grpc as pb_grpc


class EventsServicer(pb_grpc.EventsServiceServicer):
    """``tips.events.v1.EventsService``: ingest, read, replay and purge a user's signals."""

    def __init__(self, signals: Signals) -> None:
        self.signals = signals

    async def BatchIngestSignals(
        self, request: pb.BatchIngestSignalsRequest, context: Any
    ) -> pb.BatchIngestSignalsResponse:
        user_id = require_user_parent(request.parent)
        return await self.signals.ingest(user_id, request.signals)

    async def GetSignal(self, request: pb.GetSignalRequest, context: Any) -> pb.GetSignalResponse:
        user_id, signal_id = domain.parse_signal_name(request.name)
        require_owner(request.name, "name")
        return pb.GetSignalResponse(signal=await self.signals.get(request.name, user_id, signal_id))

    async def ListSignals(
        self, request: pb.ListSignalsRequest, context: Any
    ) -> pb.ListSignalsResponse:
        user_id = require_user_parent(request.parent)
        signals, token = await self.signals.list_page(domain.parse_list_request(request, user_id))
        return pb.ListSignalsResponse(signals=signals, next_page_token=token)

    async def PurgeSignals(
        self, request: pb.PurgeSignalsRequest, context: Any
    ) -> pb.PurgeSignalsResponse:
        user_id = require_user_parent(request.parent)
        selector = selectors.parse_purge(request, user_id)
        return await self.signals.purge(selector, request.validate_only)

    async def ReplaySignals(
        self, request: pb.ReplaySignalsRequest, context: Any
    ) -> AsyncIterator[pb.ReplaySignalsResponse]:
        user_id = require_user_parent(request.parent)
        query = selectors.parse_replay(request, user_id, datetime.now(UTC))
        async for signals, token in self.signals.scan(query):
            yield pb.ReplaySignalsResponse(signals=signals, resume_token=token)


class EventsInternalServicer(pb_grpc.EventsInternalServiceServicer):
    """``tips.events.v1.EventsInternalService``: connector ingest and replay of all users."""

    def __init__(self, signals: Signals) -> None:
        self.signals = signals

    async def BatchIngestConnectorSignals(
        self, request: pb.BatchIngestConnectorSignalsRequest, context: Any
    ) -> pb.BatchIngestConnectorSignalsResponse:
        return await self.signals.ingest_connector(request.signals)

    async def ReplayAllSignals(
        self, request: pb.ReplayAllSignalsRequest, context: Any
    ) -> AsyncIterator[pb.ReplayAllSignalsResponse]:
        query = selectors.parse_replay_all(request, datetime.now(UTC))
        async for signals, token in self.signals.scan(query):
            yield pb.ReplayAllSignalsResponse(signals=signals, resume_token=token)

"""gRPC servicers of the events service: parse, check the caller, store, answer."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from kernel.db import Database
from kernel.errors import InvalidArgument, NotFound
from kernel.identity import parse_user, require_owner
from services.events import domain, store
from tips.events.v1 import events_service_pb2 as pb
from tips.events.v1 import events_service_pb2_grpc as pb_grpc

ACCEPTED = pb.INGEST_OUTCOME_ACCEPTED
DUPLICATE = pb.INGEST_OUTCOME_DUPLICATE
REJECTED = pb.INGEST_OUTCOME_REJECTED


def _require_user_parent(parent: str) -> str:
    """The user id of ``users/{user}``, which the caller must be."""
    user_id = parse_user(parent, "parent")
    if parent != domain.user_name(user_id):
        raise InvalidArgument([("parent", f"must be users/{{user}}, got {parent!r}")])
    require_owner(parent, "parent")
    return user_id


def new_signal_id() -> str:
    return uuid.uuid4().hex


class EventsServicer(pb_grpc.EventsServiceServicer):
    """``tips.events.v1.EventsService``: ingest and read a user's signals."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def BatchIngestSignals(
        self, request: pb.BatchIngestSignalsRequest, context: Any
    ) -> pb.BatchIngestSignalsResponse:
        user_id = _require_user_parent(request.parent)
        domain.check_batch_size(len(request.signals))
        now = datetime.now(UTC)
        response = pb.BatchIngestSignalsResponse()
        # One transaction: every accepted signal commits with its outbox event.
        async with self.db.transaction() as session:
            for index, signal in enumerate(request.signals):
                result = response.results.add(index=index)
                violations = domain.validate_signal(signal, user_id, now)
                if violations:
                    result.outcome = REJECTED
                    result.error.CopyFrom(InvalidArgument(violations).to_status())
                    continue
                signal_id = new_signal_id()
                stored = domain.stored_signal(signal, user_id, signal_id, now)
                ingested = await store.insert_signal(session, user_id, stored, signal_id)
                result.outcome = ACCEPTED if ingested.created else DUPLICATE
                result.signal = domain.signal_name(user_id, ingested.signal_id)
        outcomes = [r.outcome for r in response.results]
        response.accepted_count = outcomes.count(ACCEPTED)
        response.duplicate_count = outcomes.count(DUPLICATE)
        response.rejected_count = outcomes.count(REJECTED)
        return response

    async def GetSignal(self, request: pb.GetSignalRequest, context: Any) -> pb.GetSignalResponse:
        user_id, signal_id = domain.parse_signal_name(request.name)
        require_owner(request.name, "name")
        async with self.db.session() as session:
            signal = await store.get_signal(session, user_id, signal_id)
        if signal is None:
            raise NotFound(request.name, resource_type="tips.app/Signal")
        return pb.GetSignalResponse(signal=signal)

    async def ListSignals(
        self, request: pb.ListSignalsRequest, context: Any
    ) -> pb.ListSignalsResponse:
        user_id = _require_user_parent(request.parent)
        query = domain.parse_list_request(request, user_id)
        async with self.db.session() as session:
            signals, cursor = await store.list_signals(session, query)
        token = domain.page_token(query, *cursor) if cursor else ""
        return pb.ListSignalsResponse(signals=signals, next_page_token=token)

    async def PurgeSignals(
        self, request: pb.PurgeSignalsRequest, context: Any
    ) -> pb.PurgeSignalsResponse:
        raise NotImplementedError("PurgeSignals")

    def ReplaySignals(
        self, request: pb.ReplaySignalsRequest, context: Any
    ) -> AsyncIterator[pb.ReplaySignalsResponse]:
        raise NotImplementedError("ReplaySignals")


class EventsInternalServicer(pb_grpc.EventsInternalServiceServicer):
    """``tips.events.v1.EventsInternalService``: not implemented yet (UNIMPLEMENTED)."""

    async def BatchIngestConnectorSignals(
        self, request: pb.BatchIngestConnectorSignalsRequest, context: Any
    ) -> pb.BatchIngestConnectorSignalsResponse:
        raise NotImplementedError("BatchIngestConnectorSignals")

    def ReplayAllSignals(
        self, request: pb.ReplayAllSignalsRequest, context: Any
    ) -> AsyncIterator[pb.ReplayAllSignalsResponse]:
        raise NotImplementedError("ReplayAllSignals")

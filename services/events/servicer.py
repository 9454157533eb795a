"""gRPC servicers of the events service: parse, check the caller, store, answer."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from kernel.db import Database
from kernel.errors import InvalidArgument, NotFound
from kernel.identity import require_owner, require_user_parent
from kernel.names import USER
from kernel.timestamps import timestamp
from services.events import domain, queries, selectors, store
from services.events.consent import ConsentGate
from services.events.ingress import Ingress
from services.events.settings import EventsSettings
from tips.events.v1 import events_service_pb2 as pb
from tips.events.v1 import events_service_pb2_grpc as pb_grpc

ACCEPTED = pb.INGEST_OUTCOME_ACCEPTED
DUPLICATE = pb.INGEST_OUTCOME_DUPLICATE
REJECTED = pb.INGEST_OUTCOME_REJECTED


def new_signal_id() -> str:
    return uuid.uuid4().hex


def new_signal_ids(count: int) -> list[str]:
    """``count`` random 128-bit hex ids from one read of the OS's random source."""
    raw = os.urandom(16 * count).hex()
    return [raw[i : i + 32] for i in range(0, len(raw), 32)]


def _settle(
    response: pb.BatchIngestSignalsResponse | pb.BatchIngestConnectorSignalsResponse,
    pending: list[tuple[pb.IngestResult, store.NewSignal]],
    stored: list[store.Ingested],
    delay: timedelta | None,
) -> None:
    for (result, item), ingested in zip(pending, stored, strict=True):
        result.outcome = ACCEPTED if ingested.created else DUPLICATE
        result.signal = domain.signal_name(item.user_id, ingested.signal_id)
    outcomes = [r.outcome for r in response.results]
    response.accepted_count = outcomes.count(ACCEPTED)
    response.duplicate_count = outcomes.count(DUPLICATE)
    response.rejected_count = outcomes.count(REJECTED)
    if delay is not None:
        response.retry_delay.FromTimedelta(delay)


async def _gate(
    gate: ConsentGate | None, pending: list[tuple[pb.IngestResult, store.NewSignal]]
) -> list[tuple[pb.IngestResult, store.NewSignal]]:
    """``pending`` less the items whose kind needs a consent not granted (REJECTED)."""
    if gate is None:
        return pending
    needed: dict[str, set[int]] = {}
    for _, item in pending:
        purpose = domain.purpose_of_kind(item.stored.kind)
        if purpose is not None:
            needed.setdefault(item.user_id, set()).add(purpose)
    if not needed:
        return pending
    errors = {user: await gate.errors(user, purposes) for user, purposes in needed.items()}
    kept = []
    for result, item in pending:
        purpose = domain.purpose_of_kind(item.stored.kind)
        error = errors.get(item.user_id, {}).get(purpose) if purpose is not None else None
        if error is None:
            kept.append((result, item))
        else:
            result.outcome = REJECTED
            result.error.CopyFrom(error.to_status())
    return kept


def _new(signal: Any, user_id: str, now: Timestamp, signal_id: str) -> store.NewSignal:
    # The request's item becomes the stored signal in place: it is not used after.
    return store.NewSignal(user_id, signal_id, domain.stamp_signal(signal, user_id, signal_id, now))


class EventsServicer(pb_grpc.EventsServiceServicer):
    """``tips.events.v1.EventsService``: ingest, read, replay and purge a user's signals."""

    def __init__(
        self,
        db: Database,
        ingress: Ingress,
        settings: EventsSettings,
        gate: ConsentGate | None = None,
    ) -> None:
        self.db = db
        self.ingress = ingress
        self.settings = settings
        self.gate = gate  # None: the consent gate is off (events_consent_gate)

    async def BatchIngestSignals(
        self, request: pb.BatchIngestSignalsRequest, context: Any
    ) -> pb.BatchIngestSignalsResponse:
        user_id = require_user_parent(request.parent)
        domain.check_batch_limit(len(request.signals), self.settings.events_max_batch)
        now = datetime.now(UTC)
        stamp = timestamp(now)
        response = pb.BatchIngestSignalsResponse()
        pending: list[tuple[pb.IngestResult, store.NewSignal]] = []
        max_bytes = self.settings.events_max_signal_bytes
        ids = new_signal_ids(len(request.signals))
        for index, signal in enumerate(request.signals):
            result = response.results.add(index=index)
            violations = domain.validate_signal(signal, user_id, now, max_bytes)
            if violations:
                result.outcome = REJECTED
                result.error.CopyFrom(InvalidArgument(violations).to_status())
            else:
                pending.append((result, _new(signal, user_id, stamp, ids[index])))
        pending = await _gate(self.gate, pending)
        # One transaction: every accepted signal commits with its outbox event.
        stored = await self.ingress.store([item for _, item in pending])
        _settle(response, pending, stored, self.ingress.soft_delay())
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
        user_id = require_user_parent(request.parent)
        query = domain.parse_list_request(request, user_id)
        async with self.db.session() as session:
            signals, cursor = await store.list_signals(session, query)
        token = domain.page_token(query, *cursor) if cursor else ""
        return pb.ListSignalsResponse(signals=signals, next_page_token=token)

    async def PurgeSignals(
        self, request: pb.PurgeSignalsRequest, context: Any
    ) -> pb.PurgeSignalsResponse:
        user_id = require_user_parent(request.parent)
        selector = selectors.parse_purge(request, user_id)
        if request.validate_only:
            async with self.db.session() as session:
                return pb.PurgeSignalsResponse(
                    purge_count=await queries.count_purge(session, selector)
                )
        now = datetime.now(UTC)
        async with self.db.transaction() as session:
            count = await queries.purge(session, selector, now)
        return pb.PurgeSignalsResponse(purge_count=count, purge_time=timestamp(now))

    async def ReplaySignals(
        self, request: pb.ReplaySignalsRequest, context: Any
    ) -> AsyncIterator[pb.ReplaySignalsResponse]:
        user_id = require_user_parent(request.parent)
        query = selectors.parse_replay(request, user_id, datetime.now(UTC))
        async for signals, token in _scan(self.db, query):
            yield pb.ReplaySignalsResponse(signals=signals, resume_token=token)


async def _scan(db: Database, query: selectors.ScanQuery) -> AsyncIterator[tuple[list[Any], str]]:
    """Chunks of ``query`` and the token resuming after each; one short session per chunk."""
    while True:
        async with db.session() as session:
            signals, last = await queries.scan_chunk(session, query)
        if last is None:
            return
        token = query.token(*last)
        yield signals, token
        if len(signals) < query.chunk:
            return
        query = replace(query, after=last)


class EventsInternalServicer(pb_grpc.EventsInternalServiceServicer):
    """``tips.events.v1.EventsInternalService``: connector ingest and replay of all users."""

    def __init__(
        self,
        db: Database,
        ingress: Ingress,
        settings: EventsSettings,
        gate: ConsentGate | None = None,
    ) -> None:
        self.db = db
        self.ingress = ingress
        self.settings = settings
        self.gate = gate  # None: the consent gate is off (events_consent_gate)

    async def BatchIngestConnectorSignals(
        self, request: pb.BatchIngestConnectorSignalsRequest, context: Any
    ) -> pb.BatchIngestConnectorSignalsResponse:
        domain.check_batch_limit(len(request.signals), self.settings.events_max_connector_batch)
        now = datetime.now(UTC)
        stamp = timestamp(now)
        response = pb.BatchIngestConnectorSignalsResponse()
        pending: list[tuple[pb.IngestResult, store.NewSignal]] = []
        max_bytes = self.settings.events_max_signal_bytes
        ids = new_signal_ids(len(request.signals))
        for index, item in enumerate(request.signals):
            result = response.results.add(index=index)
            violations = _connector_violations(item, now, max_bytes)
            if isinstance(violations, str):
                pending.append((result, _new(item.signal, violations, stamp, ids[index])))
            else:
                result.outcome = REJECTED
                result.error.CopyFrom(InvalidArgument(violations).to_status())
        # Integrations gates before fetching already; this is defence in depth.
        pending = await _gate(self.gate, pending)
        stored = await self.ingress.store([item for _, item in pending])
        _settle(response, pending, stored, self.ingress.soft_delay())
        return response

    async def ReplayAllSignals(
        self, request: pb.ReplayAllSignalsRequest, context: Any
    ) -> AsyncIterator[pb.ReplayAllSignalsResponse]:
        query = selectors.parse_replay_all(request, datetime.now(UTC))
        async for signals, token in _scan(self.db, query):
            yield pb.ReplayAllSignalsResponse(signals=signals, resume_token=token)


def _connector_violations(
    item: pb.ConnectorSignal, now: datetime, max_bytes: int
) -> str | domain.Violations:
    """The item's user id when it is valid, else its violations (fields relative to the item)."""
    try:
        user_id = USER.parse_one(item.parent, "parent")
    except InvalidArgument as exc:
        return exc.violations
    if not item.HasField("signal"):
        return [("signal", "is required")]
    violations = domain.validate_connector_signal(item.signal, user_id, now, max_bytes)
    if violations:
        return [(f"signal.{f}" if f != "signal" else f, d) for f, d in violations]
    return user_id

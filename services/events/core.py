"""The events service's use cases: ingest, read, list, purge and replay signals.

Ingest validates every item on its own (a bad item is REJECTED with its
``google.rpc.Status``, the rest of the batch goes on), passes the consent
gate, then stores what is left in ONE transaction with its ``SignalRecorded``
outbox rows, within the backpressure limits of ``backpressure.Ingress``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from kernel.db import Database
from kernel.errors import InvalidArgument, NotFound
from kernel.ids import random_ids
from kernel.names import USER
from kernel.timestamps import timestamp
from services.events import domain, queries, selectors, store
from services.events.backpressure import Ingress
from services.events.consent import ConsentGate
from services.events.settings import EventsSettings
from tips.events.v1 import events_service_pb2 as pb
from tips.events.v1 import signal_pb2

ACCEPTED = pb.INGEST_OUTCOME_ACCEPTED
DUPLICATE = pb.INGEST_OUTCOME_DUPLICATE
REJECTED = pb.INGEST_OUTCOME_REJECTED

Pending = list[tuple[pb.IngestResult, store.NewSignal]]
IngestResponse = pb.BatchIngestSignalsResponse | pb.BatchIngestConnectorSignalsResponse


class Signals:
    """Every use case of the signal store; one per process, shared by both servicers."""

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

    # --- ingest -------------------------------------------------------------------------

    async def ingest(
        self, user_id: str, signals: Sequence[signal_pb2.Signal]
    ) -> pb.BatchIngestSignalsResponse:
        """A user's batch (the phone, the app): per-item outcomes."""
        domain.check_batch_limit(len(signals), self.settings.events_max_batch)
        now = datetime.now(UTC)
        stamp = timestamp(now)
        response = pb.BatchIngestSignalsResponse()
        pending: Pending = []
        max_bytes = self.settings.events_max_signal_bytes
        ids = random_ids(len(signals))
        for index, signal in enumerate(signals):
            result = response.results.add(index=index)
            violations = domain.validate_signal(signal, user_id, now, max_bytes)
            if violations:
                result.outcome = REJECTED
                result.error.CopyFrom(InvalidArgument(violations).to_status())
            else:
                pending.append((result, _new(signal, user_id, stamp, ids[index])))
        await self._store(response, pending)
        return response

    async def ingest_connector(
        self, items: Sequence[pb.ConnectorSignal]
    ) -> pb.BatchIngestConnectorSignalsResponse:
        """A connector's batch, across users: per-item outcomes."""
        domain.check_batch_limit(len(items), self.settings.events_max_connector_batch)
        now = datetime.now(UTC)
        stamp = timestamp(now)
        response = pb.BatchIngestConnectorSignalsResponse()
        pending: Pending = []
        max_bytes = self.settings.events_max_signal_bytes
        ids = random_ids(len(items))
        for index, item in enumerate(items):
            result = response.results.add(index=index)
            checked = _connector_item(item, now, max_bytes)
            if isinstance(checked, str):
                pending.append((result, _new(item.signal, checked, stamp, ids[index])))
            else:
                result.outcome = REJECTED
                result.error.CopyFrom(InvalidArgument(checked).to_status())
        # Integrations gates before fetching already; this is defence in depth.
        await self._store(response, pending)
        return response

    async def _store(self, response: IngestResponse, pending: Pending) -> None:
        pending = await self._gate(pending)
        # One transaction: every accepted signal commits with its outbox event.
        stored = await self.ingress.store([item for _, item in pending])
        _settle(response, pending, stored, self.ingress.soft_delay())

    async def _gate(self, pending: Pending) -> Pending:
        """``pending`` less the items whose kind needs a consent not granted (REJECTED)."""
        if self.gate is None:
            return pending
        needed: dict[str, set[int]] = {}
        for _, item in pending:
            purpose = domain.purpose_of_kind(item.stored.kind)
            if purpose is not None:
                needed.setdefault(item.user_id, set()).add(purpose)
        if not needed:
            return pending
        errors = {user: await self.gate.errors(user, purposes) for user, purposes in needed.items()}
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

    # --- reads, purge, replay -------------------------------------------------------------

    async def get(self, name: str, user_id: str, signal_id: str) -> signal_pb2.Signal:
        async with self.db.session() as session:
            signal = await store.get_signal(session, user_id, signal_id)
        if signal is None:
            raise NotFound(name, resource_type="tips.app/Signal")
        return signal

    async def list_page(self, query: domain.ListQuery) -> tuple[list[signal_pb2.Signal], str]:
        """A page of signals and the token of the next one ("" at the end)."""
        async with self.db.session() as session:
            signals, cursor = await store.list_signals(session, query)
        return signals, domain.page_token(query, *cursor) if cursor else ""

    async def purge(
        self, selector: selectors.PurgeSelector, validate_only: bool
    ) -> pb.PurgeSignalsResponse:
        """Delete what ``selector`` names (and announce it), or only count it."""
        if validate_only:
            async with self.db.session() as session:
                return pb.PurgeSignalsResponse(
                    purge_count=await queries.count_purge(session, selector)
                )
        now = datetime.now(UTC)
        async with self.db.transaction() as session:
            count = await queries.purge(session, selector, now)
        return pb.PurgeSignalsResponse(purge_count=count, purge_time=timestamp(now))

    async def scan(self, query: selectors.ScanQuery) -> AsyncIterator[tuple[list[Any], str]]:
        """Chunks of ``query`` and the token resuming after each; one short session per chunk."""
        while True:
            async with self.db.session() as session:
                signals, last = await queries.scan_chunk(session, query)
            if last is None:
                return
            token = query.token(*last)
            yield signals, token
            if len(signals) < query.chunk:
                return
            query = replace(query, after=last)


def _new(signal: Any, user_id: str, now: Timestamp, signal_id: str) -> store.NewSignal:
    # The request's item becomes the stored signal in place: it is not used after.
    return store.NewSignal(user_id, signal_id, domain.stamp_signal(signal, user_id, signal_id, now))


def _settle(
    response: IngestResponse,
    pending: Pending,
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


def _connector_item(
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

"""Helpers of the events integration tests: signals, a retrying phone client, stream reads."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2

from kernel.errors import status_details, unpack_details
from kernel.server import ServiceServer
from services.events.service import definition
from services.events.settings import EventsSettings
from tests.support.tokens import as_user
from tips.events.v1 import events_service_pb2 as ev
from tips.events.v1 import events_service_pb2_grpc as ev_grpc
from tips.events.v1 import signal_pb2

T = TypeVar("T")
SIGNAL_SUBJECT = "tips.events.v1.signal_recorded"
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


def user() -> str:
    return f"u_{secrets.token_hex(5)}"


def md(user_id: str) -> tuple[tuple[str, str], ...]:
    return as_user(user_id)


def ts(value: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(value)
    return out


def steps(
    count: int, client_id: str | None = None, at: datetime | None = None
) -> signal_pb2.Signal:
    end = at or datetime.now(UTC)
    return signal_pb2.Signal(
        client_signal_id=client_id or secrets.token_hex(8),
        kind=signal_pb2.SIGNAL_KIND_STEPS,
        source=signal_pb2.SIGNAL_SOURCE_PHONE,
        start_time=ts(end - timedelta(seconds=30)),
        end_time=ts(end),
        steps=signal_pb2.StepsPayload(count=count),
    )


def retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    """The RetryInfo delay of a failed call, in seconds."""
    for detail in unpack_details(status_details(error)):
        if isinstance(detail, error_details_pb2.RetryInfo):
            return detail.retry_delay.ToTimedelta().total_seconds()
    return None


@dataclass
class PhoneStats:
    """What a retrying client saw."""

    settled: int = 0
    accepted: int = 0
    duplicates: int = 0
    refusals: dict[str, int] = field(default_factory=dict)
    missing_retry_info: int = 0


async def send_until_settled(
    stub: ev_grpc.EventsServiceStub,
    user_id: str,
    batch: list[signal_pb2.Signal],
    stats: PhoneStats,
    give_up: float = 50.0,
) -> None:
    """Send ``batch`` as a phone does: the same client ids again until it is settled."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up
    request = ev.BatchIngestSignalsRequest(parent=f"users/{user_id}", signals=batch)
    while True:
        try:
            response = await stub.BatchIngestSignals(request, metadata=md(user_id), timeout=15)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in RETRYABLE or loop.time() > deadline:
                raise
            name = exc.code().name
            stats.refusals[name] = stats.refusals.get(name, 0) + 1
            delay = retry_delay(exc)
            if delay is None:
                # Transport failures and deadlines carry no hint; refusals must.
                stats.missing_retry_info += exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED
                delay = 0.5
            await asyncio.sleep(min(delay, 1.0))
            continue
        assert response.rejected_count == 0, response.results[0]
        stats.settled += len(batch)
        stats.accepted += response.accepted_count
        stats.duplicates += response.duplicate_count
        return


@contextlib.asynccontextmanager
async def events_server(settings: EventsSettings) -> AsyncIterator[ServiceServer]:
    """The events service in process on a free port (its own erasure durable)."""
    server = ServiceServer(definition(f"events-erasure-t{secrets.token_hex(3)}"), settings, port=0)
    try:
        await server.start()
        yield server
    finally:
        await server.stop(grace=0)

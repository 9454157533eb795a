"""The event bus: NATS JetStream behind one small interface.

Every message is a proto payload with headers:
``Nats-Msg-Id`` (idempotent publish within the stream's duplicate window),
``Content-Type: application/protobuf; proto=<full message name>`` and W3C
trace context (``traceparent``). Subjects and streams are declared in the
protos (``option (tips.options.v1.event) = {subject, stream}``) and read here
with ``subject_of`` / ``stream_of`` / ``streams_for``.

Consumers are durable pull consumers with explicit acks, so delivery is AT
LEAST ONCE: a handler that fails, a process that dies before its ack, or an
ack lost on the wire all lead to redelivery, and the publish dedupe window is
only 2 minutes. Handlers MUST therefore be idempotent: use natural-key upserts
(``INSERT ... ON CONFLICT``) or ``kernel.outbox.claim`` (a processed-messages
table written in the handler's own transaction).

Kafka is the later swap: nothing outside this module imports ``nats``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    PubAck,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from kernel.settings import Settings
from tips.options.v1 import options_pb2

__all__ = [
    "CONTENT_TYPE_PREFIX",
    "Bus",
    "BusError",
    "Delivery",
    "PubAck",
    "StreamSpec",
    "content_type_of",
    "message_headers",
    "stream_of",
    "streams_for",
    "subject_of",
]

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("kernel.bus")

CONTENT_TYPE_PREFIX = "application/protobuf; proto="
MSG_ID_HEADER = "Nats-Msg-Id"
CONTENT_TYPE_HEADER = "Content-Type"

M = TypeVar("M", bound=Message)


class BusError(RuntimeError):
    """The bus is unreachable, misconfigured, or a message declares no event option."""


# --- declarations read from the protos ------------------------------------------------


@dataclass(frozen=True)
class StreamSpec:
    """A JetStream stream: name, subjects and limits (seconds and bytes)."""

    name: str
    subjects: tuple[str, ...]
    max_age: float = 7 * 24 * 3600.0
    max_bytes: int = 1 << 30
    duplicate_window: float = 120.0
    replicas: int = 1
    memory: bool = False

    def config(self) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            subjects=list(self.subjects),
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            max_age=self.max_age,
            max_bytes=self.max_bytes,
            duplicate_window=self.duplicate_window,
            num_replicas=self.replicas,
            storage=StorageType.MEMORY if self.memory else StorageType.FILE,
        )


def _event_option(message: type[Message] | Message) -> options_pb2.EventOptions:
    descriptor = message.DESCRIPTOR
    opts = descriptor.GetOptions()
    if not opts.HasExtension(options_pb2.event):
        raise BusError(
            f"{descriptor.full_name} declares no (tips.options.v1.event) option: "
            "only messages declared as events can be published"
        )
    event: options_pb2.EventOptions = opts.Extensions[options_pb2.event]
    return event


def subject_of(message: type[Message] | Message) -> str:
    """The subject a message type is published on (its event option)."""
    subject = _event_option(message).subject
    if not subject:
        raise BusError(f"{message.DESCRIPTOR.full_name}: event option has no subject")
    return subject


def stream_of(message: type[Message] | Message) -> str:
    """The stream that captures a message type's subject (its event option)."""
    stream = _event_option(message).stream
    if not stream:
        raise BusError(f"{message.DESCRIPTOR.full_name}: event option has no stream")
    return stream


def streams_for(
    *message_classes: type[Message],
    max_age: float = 7 * 24 * 3600.0,
    max_bytes: int = 1 << 30,
    duplicate_window: float = 120.0,
) -> list[StreamSpec]:
    """One ``StreamSpec`` per stream named by the messages, with their subjects."""
    grouped: dict[str, list[str]] = {}
    for cls in message_classes:
        subjects = grouped.setdefault(stream_of(cls), [])
        if subject_of(cls) not in subjects:
            subjects.append(subject_of(cls))
    return [
        StreamSpec(name, tuple(subjects), max_age, max_bytes, duplicate_window)
        for name, subjects in grouped.items()
    ]


def content_type_of(message: type[Message] | Message) -> str:
    return CONTENT_TYPE_PREFIX + message.DESCRIPTOR.full_name


# --- trace context (kernel.telemetry when present, else the global propagator) -------


def _telemetry_hook(name: str) -> Callable[..., Any] | None:
    # kernel.telemetry is written in parallel and optional here: look it up lazily.
    try:
        module = importlib.import_module("kernel.telemetry")
    except ImportError:
        return None
    hook = getattr(module, name, None)
    return hook if callable(hook) else None


def _inject(headers: dict[str, str]) -> None:
    hook = _telemetry_hook("inject_headers")
    if hook is not None:
        hook(headers)
    else:
        propagate.inject(headers)


def _extract(headers: Mapping[str, str]) -> otel_context.Context:
    hook = _telemetry_hook("extract_headers")
    if hook is not None:
        ctx: otel_context.Context = hook(dict(headers))
        return ctx
    return propagate.extract(dict(headers))


def message_headers(message: type[Message] | Message, msg_id: str) -> dict[str, str]:
    """The headers a message is published with, trace context of the caller included."""
    if not msg_id:
        raise BusError("msg_id is required: it makes publishing idempotent")
    headers = {MSG_ID_HEADER: msg_id, CONTENT_TYPE_HEADER: content_type_of(message)}
    _inject(headers)
    return headers


# --- consuming --------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery(Generic[M]):
    """One delivered message. ``num_delivered`` > 1 means a redelivery."""

    message: M
    msg_id: str
    subject: str
    headers: Mapping[str, str]
    num_delivered: int
    stream: str
    stream_sequence: int
    _raw: Msg = field(repr=False, compare=False)

    async def in_progress(self) -> None:
        """Tell the server the handler is still working (resets ack_wait)."""
        await self._raw.in_progress()


Handler = Callable[[Delivery[M]], Awaitable[None]]


def _retry_delay(num_delivered: int, base: float, cap: float) -> float:
    return float(min(cap, base * 2 ** max(0, num_delivered - 1)))


# --- the bus ----------------------------------------------------------------------------


async def _wait_reachable(url: str, attempts: int, delay: float) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 4222
    for attempt in range(1, attempts + 1):
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        except (OSError, TimeoutError) as exc:
            if attempt == attempts:
                raise BusError(
                    f"NATS at {host}:{port} unreachable after {attempts} attempts: {exc}"
                ) from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


class Bus:
    """A NATS connection with JetStream: publish, declare streams, consume."""

    def __init__(self, nc: NatsClient, name: str) -> None:
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream()
        self.name = name
        self._closing = False

    @classmethod
    async def connect(
        cls,
        settings: Settings,
        name: str,
        *,
        attempts: int = 10,
        delay: float = 0.2,
        connect_timeout: float = 10.0,
    ) -> Bus:
        """Connect to ``settings.nats_url``: bounded retries first, then reconnects forever."""
        url = settings.nats_url.split(",")[0].strip()
        # Polling the port first avoids nats-py's noisy retry loop on a server still starting.
        await _wait_reachable(url, attempts, delay)

        async def on_error(exc: Exception) -> None:
            log.warning("nats error", extra={"bus": name, "error": str(exc)})

        async def on_disconnect() -> None:
            log.warning("nats disconnected", extra={"bus": name})

        async def on_reconnect() -> None:
            log.info("nats reconnected", extra={"bus": name})

        try:
            nc = await asyncio.wait_for(
                nats.connect(
                    servers=[s.strip() for s in settings.nats_url.split(",")],
                    name=name,
                    connect_timeout=2,
                    allow_reconnect=True,
                    # After the first connect, outages are waited out, never fatal.
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    error_cb=on_error,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                ),
                connect_timeout,
            )
        except Exception as exc:
            raise BusError(f"cannot connect {name!r} to NATS at {url}: {exc!r}") from exc
        return cls(nc, name)

    @property
    def is_connected(self) -> bool:
        return bool(self._nc.is_connected)

    async def ensure_streams(self, specs: Sequence[StreamSpec]) -> None:
        """Create each stream, or update it to the spec (idempotent)."""
        for spec in specs:
            config = spec.config()
            try:
                await self._js.stream_info(spec.name)
            except nats.js.errors.NotFoundError:
                await self._js.add_stream(config)
            else:
                await self._js.update_stream(config)

    async def delete_stream(self, name: str) -> None:
        """Delete a stream (tests and tooling); missing streams are ignored."""
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self._js.delete_stream(name)

    async def publish(
        self,
        message: Message,
        *,
        msg_id: str,
        subject: str | None = None,
        ack_timeout: float = 5.0,
    ) -> PubAck:
        """Publish and wait for the stream's ack; a repeat ``msg_id`` is a no-op.

        ``PubAck.duplicate`` is True for a deduplicated repeat (None on a first publish).
        """
        return await self.publish_bytes(
            subject or subject_of(message),
            message.SerializeToString(),
            headers=message_headers(message, msg_id),
            ack_timeout=ack_timeout,
        )

    async def publish_bytes(
        self,
        subject: str,
        payload: bytes,
        *,
        headers: Mapping[str, str],
        ack_timeout: float = 5.0,
    ) -> PubAck:
        """Publish an encoded message with prepared headers (the outbox relay's path)."""
        if MSG_ID_HEADER not in headers:
            raise BusError(f"publish to {subject}: the {MSG_ID_HEADER} header is required")
        try:
            return await self._js.publish(
                subject, payload, timeout=ack_timeout, headers=dict(headers)
            )
        except nats.js.errors.NoStreamResponseError as exc:
            raise BusError(f"no stream captures subject {subject!r}") from exc

    async def _bind(
        self,
        stream: str,
        durable: str,
        subjects: Sequence[str],
        ack_wait: float,
        max_deliver: int,
        batch: int,
    ) -> JetStreamContext.PullSubscription:
        if not subjects:
            raise BusError(f"consumer {durable!r}: at least one subject is required")
        config = ConsumerConfig(
            name=durable,
            durable_name=durable,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
            max_ack_pending=max(1000, batch * 4),
            # One subject uses the classic filter, which older servers understand too.
            filter_subject=subjects[0] if len(subjects) == 1 else None,
            filter_subjects=list(subjects) if len(subjects) > 1 else None,
        )
        # Creates the durable or updates it (server-side create-or-update).
        try:
            info = await self._js.add_consumer(stream, config)
        except nats.js.errors.NotFoundError as exc:
            raise BusError(
                f"consumer {durable!r}: stream {stream!r} not found "
                "(declare it with ensure_streams)"
            ) from exc
        if len(subjects) > 1 and not info.config.filter_subjects:
            # Servers before 2.10 silently ignore filter_subjects and deliver everything.
            raise BusError(
                f"consumer {durable!r}: this NATS server does not support several "
                "filter subjects (needs nats-server >= 2.10)"
            )
        return await self._js.pull_subscribe_bind(durable=durable, stream=stream)

    async def consume(
        self,
        *,
        stream: str,
        durable: str,
        subjects: Sequence[str],
        message_type: type[M],
        handler: Handler[M],
        batch: int = 64,
        ack_wait: float = 30.0,
        max_deliver: int = -1,
        retry_delay: float = 1.0,
        max_retry_delay: float = 60.0,
        fetch_timeout: float = 2.0,
    ) -> None:
        """Run a durable pull consumer until cancelled (or the bus closes).

        Each message is decoded and handed to ``handler`` inside its trace;
        success acks, an exception naks with a delay growing with the delivery
        count, an undecodable or mistyped message is terminated (never retried).
        The handler must be idempotent (see the module docstring).
        """
        expected_type = content_type_of(message_type)
        sub = await self._bind(stream, durable, subjects, ack_wait, max_deliver, batch)
        backoff = 0.1
        try:
            while not self._closing:
                try:
                    msgs = await sub.fetch(batch, timeout=fetch_timeout)
                except nats.errors.TimeoutError:
                    continue
                except Exception as exc:
                    if self._closing:
                        return
                    # Outages are waited out: the client reconnects by itself.
                    log.warning(
                        "fetch failed, retrying",
                        extra={"durable": durable, "error": repr(exc)},
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.1
                pending = list(msgs)
                try:
                    while pending:
                        await self._handle(
                            pending[0], stream, expected_type, message_type, handler,
                            retry_delay, max_retry_delay,
                        )  # fmt: skip
                        pending.pop(0)
                finally:
                    # Cancelled mid-batch: hand the rest back now rather than after ack_wait.
                    for msg in pending:
                        with contextlib.suppress(Exception):
                            await msg.nak()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _handle(
        self,
        msg: Msg,
        stream: str,
        expected_type: str,
        message_type: type[M],
        handler: Handler[M],
        retry_delay: float,
        max_retry_delay: float,
    ) -> None:
        headers: dict[str, str] = dict(msg.headers or {})
        meta = msg.metadata
        msg_id = headers.get(MSG_ID_HEADER, "")
        where = {"subject": msg.subject, "msg_id": msg_id, "seq": meta.sequence.stream}
        content_type = headers.get(CONTENT_TYPE_HEADER)
        if content_type != expected_type:
            log.error(
                "terminating message with unexpected content type",
                extra={**where, "content_type": content_type, "expected": expected_type},
            )
            await msg.term()
            return
        try:
            message = message_type.FromString(msg.data)
        except DecodeError as exc:
            log.error("terminating undecodable message", extra={**where, "error": str(exc)})
            await msg.term()
            return
        delivery = Delivery(
            message=message,
            msg_id=msg_id,
            subject=msg.subject,
            headers=headers,
            num_delivered=meta.num_delivered,
            stream=stream,
            stream_sequence=meta.sequence.stream,
            _raw=msg,
        )
        with _tracer.start_as_current_span(
            f"{msg.subject} process",
            context=_extract(headers),
            kind=trace.SpanKind.CONSUMER,
            attributes={"messaging.system": "nats", "messaging.message.id": msg_id},
        ) as span:
            # CancelledError is no Exception: it propagates and consume() naks the message.
            try:
                await handler(delivery)
            except Exception as exc:
                delay = _retry_delay(meta.num_delivered, retry_delay, max_retry_delay)
                span.record_exception(exc)
                log.warning(
                    "handler failed, message will be redelivered",
                    extra={**where, "delivered": meta.num_delivered, "delay": delay},
                    exc_info=True,
                )
                await msg.nak(delay=delay)
                return
        await msg.ack()

    async def close(self) -> None:
        """Drain subscriptions and pending publishes, then close."""
        self._closing = True
        if self._nc.is_closed:
            return
        try:
            await self._nc.drain()
        except Exception as exc:  # closing anyway: a dead connection cannot drain
            log.warning("nats drain failed", extra={"error": repr(exc)})
            with contextlib.suppress(Exception):
                await self._nc.close()

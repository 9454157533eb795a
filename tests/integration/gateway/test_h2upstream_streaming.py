"""The edge's HTTP/2 client making streamed-request calls (client streaming, bidi).

Against the kernel's own server (``kernel.h2server``), as in the mesh: many
messages and a half-close, bidi both half and full duplex, a server that
answers (with an error, or with its response) while the client still sends,
an upload of megabytes past every window with a handler that reads slowly,
deadlines and cancellation seen by the handler. A bare HTTP/2 server refuses
a stream (REFUSED_STREAM), which must be sent again whole. Every wait is for
a condition, with a generous deadline: the machine may be loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from gateway.h2upstream import WRITE_BUFFER, Channel, StreamCall, UpstreamError
from kernel.h2server import Server
from kernel.h2wire import (
    DATA,
    END_HEADERS,
    END_STREAM,
    FRAME,
    HEADERS,
    PREFACE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    U32,
    frame,
    framed,
    literal,
)
from tests.support.h2probe import WAIT, Context, Raw, same, within

pytestmark = pytest.mark.integration

SERVICE_NAME = "test.h2.Upload"
SERVICE = f"/{SERVICE_NAME}/"
MiB = 1024 * 1024


class Probe:
    """Handlers over raw bytes; what each call saw is kept for the test to read."""

    def __init__(self) -> None:
        self.cancelled: defaultdict[bytes, asyncio.Event] = defaultdict(asyncio.Event)
        self.started: defaultdict[bytes, asyncio.Event] = defaultdict(asyncio.Event)
        self.metadata: list[tuple[str, Any]] = []

    async def total(self, requests: AsyncIterator[bytes], context: Context) -> bytes:
        self.metadata = list(context.invocation_metadata() or ())
        await context.send_initial_metadata((("x-first", "one"),))
        context.set_trailing_metadata((("x-last", "two"),))
        return b"%d" % sum([int(m.decode()) async for m in requests])

    async def digest(self, requests: AsyncIterator[bytes], context: Context) -> bytes:
        """Reads slowly (a pause every few messages): the client must wait for the window."""
        hashed, size, count = hashlib.sha256(), 0, 0
        async for message in requests:
            hashed.update(message)
            size += len(message)
            count += 1
            if count % 8 == 0:
                await asyncio.sleep(0.005)
        return b"%d %d %s" % (count, size, hashed.hexdigest().encode())

    async def refuse(self, requests: AsyncIterator[bytes], context: Context) -> bytes:
        """FAILED_PRECONDITION at the message ``refuse``, whatever the client still sends."""
        async for message in requests:
            if message == b"refuse":
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "refused mid-stream")
        return b"all taken"

    async def first(self, requests: AsyncIterator[bytes], context: Context) -> bytes:
        """Answers after the first message, with an answer larger than a small window."""
        async for message in requests:
            return message * 100_000
        return b""

    async def wait(self, requests: AsyncIterator[bytes], context: Context) -> bytes:
        """Reads one message (its key), then waits for more forever."""
        key = b""
        try:
            async for message in requests:
                key = key or message
                self.started[key].set()
        except asyncio.CancelledError:
            self.cancelled[key].set()
            raise
        raise AssertionError("the request never ends")

    async def bidi(self, requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
        async for message in requests:
            yield b"re:" + message


def handlers(probe: Probe) -> grpc.GenericRpcHandler:
    methods = {
        name: grpc.stream_unary_rpc_method_handler(getattr(probe, name))
        for name in ("total", "digest", "refuse", "first", "wait")
    }
    methods["bidi"] = grpc.stream_stream_rpc_method_handler(probe.bidi)
    return grpc.method_handlers_generic_handler(SERVICE_NAME, methods)


async def until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


class Served:
    def __init__(self, probe: Probe, server: Server, channel: Channel) -> None:
        self.probe = probe
        self.server = server
        self.channel = channel

    def call(self, method: str, **kwargs: Any) -> StreamCall:
        return self.channel.stream(SERVICE + method, same)(**kwargs)

    def open_streams(self) -> int:
        connection = self.channel._connection
        return 0 if connection is None else len(connection.streams)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    probe = Probe()
    server = Server()
    server.add_generic_rpc_handlers((handlers(probe),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = Channel("127.0.0.1", port)
    try:
        yield Served(probe, server, channel)
    finally:
        await channel.close()
        await within(server.stop(None), "the server to stop")


async def write_all(call: StreamCall, messages: list[bytes]) -> None:
    for message in messages:
        assert await call.write(Raw(message)), "the call ended early"
    assert await call.done_writing()


# --- the call shapes -------------------------------------------------------------


async def test_a_client_stream_sends_every_message_then_half_closes(served: Served) -> None:
    call = served.call("total", timeout=WAIT, metadata=[("x-plain", "v"), ("x-key-bin", b"\x01")])
    await write_all(call, [b"%d" % i for i in range(1, 101)])
    assert await within(call, "the answer") == b"5050"
    assert dict(await call.initial_metadata()) == {"x-first": "one"}
    assert ("x-last", "two") in call.trailing_metadata()
    sent = dict(served.probe.metadata)
    assert sent["x-plain"] == "v" and sent["x-key-bin"] == b"\x01"
    # No message at all: the stream opens with its end.
    empty = served.call("total", timeout=WAIT)
    assert await empty.done_writing()
    assert await within(empty, "the answer") == b"0"
    # Nor a half-close: awaiting the answer opens the stream; the deadline ends it.
    unended = served.call("total", timeout=0.3)
    with pytest.raises(UpstreamError) as failed:
        await within(unended, "the deadline")
    assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert served.open_streams() == 0


async def test_bidi_half_and_full_duplex(served: Served) -> None:
    call = served.call("bidi", timeout=WAIT)
    await write_all(call, [b"a", b"b", b"c"])
    assert [await within(call.read(), "a message") for _ in range(4)] == [
        b"re:a",
        b"re:b",
        b"re:c",
        grpc.aio.EOF,
    ]
    # Ping-pong: each answer arrives while the request is still open.
    call = served.call("bidi", timeout=WAIT)
    for i in range(50):
        assert await call.write(Raw(b"%d" % i))
        assert await within(call.read(), "the answer") == b"re:%d" % i
    assert await call.done_writing()
    assert await within(call.read(), "the end") is grpc.aio.EOF
    assert served.open_streams() == 0


# --- an answer while the client still sends ----------------------------------------


async def test_an_error_while_the_client_sends_is_the_answer(served: Served) -> None:
    """The server aborts mid-stream: every write after its status is False, never an
    error, and the call's status is the server's (grpc.aio's client could say INTERNAL)."""

    async def one() -> tuple[int, grpc.StatusCode, str]:
        call = served.call("refuse", timeout=WAIT)
        assert await call.write(Raw(b"a"))
        assert await call.write(Raw(b"refuse"))
        taken = 0
        deadline = time.monotonic() + WAIT
        while await call.write(Raw(b"more" * 1000)):  # until the status arrives
            taken += 1
            assert time.monotonic() < deadline, "the server's status never arrived"
            await asyncio.sleep(0)
        assert not await call.write(Raw(b"after"))
        assert not await call.done_writing()
        with pytest.raises(UpstreamError) as failed:
            await within(call, "the answer")
        return taken, failed.value.code(), failed.value.details()

    results = await within(asyncio.gather(*(one() for _ in range(40))), "the calls")
    assert {(code, details) for _, code, details in results} == {
        (grpc.StatusCode.FAILED_PRECONDITION, "refused mid-stream")
    }
    assert any(taken for taken, _, _ in results)  # some wrote on past the abort
    assert served.open_streams() == 0
    assert served.server.active_streams() == 0
    # The connection is as good as before.
    call = served.call("total", timeout=WAIT)
    await write_all(call, [b"2", b"3"])
    assert await within(call, "the answer") == b"5"


async def test_a_response_before_the_request_ends_is_the_answer(served: Served) -> None:
    """OK with a response after the first message, larger than one frame: the rest of
    the request is not sent, the response is the call's."""
    call = served.call("first", timeout=WAIT)
    assert await call.write(Raw(b"x"))
    deadline = time.monotonic() + WAIT
    while await call.write(Raw(b"y" * 10_000)):
        assert time.monotonic() < deadline, "the server's answer never arrived"
        await asyncio.sleep(0.001)
    assert await within(call, "the answer") == b"x" * 100_000
    # Answered before a half-close the client then sends: no error either.
    call = served.call("first", timeout=WAIT)
    assert await call.write(Raw(b"z"))
    await until("the answer", lambda: call._stream is not None and call._stream.status is not None)
    assert not await call.done_writing()
    assert await within(call, "the answer") == b"z" * 100_000
    assert served.open_streams() == 0
    assert served.server.active_streams() == 0


# --- flow control --------------------------------------------------------------------


async def test_an_upload_of_megabytes_waits_for_a_slow_reader(served: Served) -> None:
    """12 MiB in 192 messages, past the server's 8 MiB windows, read slowly: writes
    wait for the window (the client holds at most WRITE_BUFFER past it), the bytes
    arrive whole and in order, and other calls on the connection go on meanwhile."""
    messages = [hashlib.sha256(b"%d" % i).digest() * 2048 for i in range(192)]  # 64 KiB each
    call = served.call("digest", timeout=WAIT)
    held_back = 0

    async def upload() -> None:
        nonlocal held_back
        for message in messages:
            assert await call.write(Raw(message))
            stream = call._stream
            assert stream is not None
            held_back = max(held_back, len(stream.outgoing))
            assert len(stream.outgoing) <= WRITE_BUFFER
        assert await call.done_writing()

    uploading = asyncio.ensure_future(upload())
    # Meanwhile, on the same connection:
    other = served.call("total", timeout=WAIT)
    await write_all(other, [b"1", b"2"])
    assert await within(other, "the other call") == b"3"
    await within(uploading, "the upload")
    expected = hashlib.sha256(b"".join(messages)).hexdigest().encode()
    assert await within(call, "the digest") == b"192 %d %s" % (12 * MiB, expected)
    assert held_back > 0, "the windows never held a write back"


async def test_bidi_uploads_past_the_window(served: Served) -> None:
    call = served.call("bidi", timeout=WAIT)
    chunks = [bytes([i]) * MiB for i in range(10)]
    writing = asyncio.ensure_future(write_all(call, chunks))
    answers = []
    while (message := await within(call.read(), "an answer")) is not grpc.aio.EOF:
        answers.append(message)
    await within(writing, "the writes")
    assert answers == [b"re:" + chunk for chunk in chunks]


# --- deadlines and cancellation ----------------------------------------------------


async def test_the_deadline_ends_a_call_still_sending(served: Served) -> None:
    call = served.call("wait", timeout=0.5)
    assert await call.write(Raw(b"deadline"))
    await within(served.probe.started[b"deadline"].wait(), "the handler")
    with pytest.raises(UpstreamError) as failed:
        await within(call, "the deadline")
    assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert not await call.write(Raw(b"late"))
    await within(served.probe.cancelled[b"deadline"].wait(), "the handler's cancellation")
    await until("the server's stream to end", lambda: served.server.active_streams() == 0)


async def test_cancel_resets_the_stream_and_the_handler_sees_it(served: Served) -> None:
    call = served.call("wait", timeout=WAIT)
    assert await call.write(Raw(b"cancel"))
    await within(served.probe.started[b"cancel"].wait(), "the handler")
    assert call.cancel()
    assert not await call.write(Raw(b"late"))
    assert not await call.done_writing()
    with pytest.raises(asyncio.CancelledError):
        await call
    await within(served.probe.cancelled[b"cancel"].wait(), "the handler's cancellation")
    assert served.open_streams() == 0


async def test_a_write_waiting_for_the_window_is_cancelled_with_its_call(served: Served) -> None:
    """The writer's task cancelled while its write waits for the window: the call is
    reset (the handler sees it), not left open to its deadline."""
    call = served.call("wait", timeout=WAIT)
    assert await call.write(Raw(b"blocked"))
    await within(served.probe.started[b"blocked"].wait(), "the handler")

    async def flood() -> None:
        while await call.write(Raw(b"f" * MiB)):  # the handler reads no more than 16
            pass

    flooding = asyncio.ensure_future(flood())
    await until(
        "a write waiting for the window",
        lambda: call._stream is not None and call._stream.writer is not None,
    )
    flooding.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flooding
    await within(served.probe.cancelled[b"blocked"].wait(), "the handler's cancellation")
    assert served.open_streams() == 0


async def test_a_call_that_cannot_start_says_why_when_awaited() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nobody listens
    channel = Channel("127.0.0.1", port)
    try:
        call = channel.stream(SERVICE + "total", same)(timeout=WAIT)
        assert not await call.write(Raw(b"1"))
        assert not await call.done_writing()
        with pytest.raises(UpstreamError) as failed:
            await call
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        await channel.close()


# --- a stream the server refuses unseen ---------------------------------------------


class Refuser:
    """A bare HTTP/2 server: refuses its connection's first stream (REFUSED_STREAM) once
    it has seen its HEADERS, or its whole request; answers each later stream with
    the request bytes it got, as one message."""

    def __init__(self, refuse_at_end: bool) -> None:
        self.refuse_at_end = refuse_at_end
        self.refused: set[int] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(len(PREFACE))
        writer.write(frame(SETTINGS, 0, 0))
        bodies: defaultdict[int, bytearray] = defaultdict(bytearray)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head, flags, stream_id = FRAME.unpack(await reader.readexactly(9))
                payload = await reader.readexactly(head >> 8)
                if head & 0xFF not in (HEADERS, DATA) or stream_id in self.refused:
                    continue
                if head & 0xFF == DATA:
                    bodies[stream_id] += payload
                ended = bool(flags & END_STREAM)
                if stream_id == 1 and (ended or not self.refuse_at_end):
                    self.refused.add(stream_id)
                    writer.write(frame(RST_STREAM, 0, stream_id, U32.pack(REFUSED_STREAM)))
                elif ended and stream_id != 1:
                    writer.write(self.answer(stream_id, bytes(bodies.pop(stream_id, b""))))
                await writer.drain()

    @staticmethod
    def answer(stream_id: int, body: bytes) -> bytes:
        head = literal(b":status", b"200") + literal(b"content-type", b"application/grpc")
        trailers = literal(b"grpc-status", b"0")
        return (
            frame(HEADERS, END_HEADERS, stream_id, head)
            + frame(DATA, 0, stream_id, framed(body))
            + frame(HEADERS, END_HEADERS | END_STREAM, stream_id, trailers)
        )


@pytest.mark.parametrize("refuse_at_end", [False, True], ids=["at-headers", "at-end"])
async def test_a_refused_stream_is_sent_again_whole(refuse_at_end: bool) -> None:
    refuser = Refuser(refuse_at_end)
    server = await asyncio.start_server(refuser.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    channel = Channel("127.0.0.1", port)
    try:
        call = channel.stream(SERVICE + "echo", same)(timeout=WAIT)
        sent = [b"one", b"two", b"three"]
        for message in sent:
            assert await call.write(Raw(message))
            await asyncio.sleep(0.01)  # the refusal may come between writes
        assert await call.done_writing()
        answer = await within(call, "the answer")
        assert answer == b"".join(framed(m) for m in sent)  # every message, once, in order
        assert refuser.refused == {1}
    finally:
        await channel.close()
        server.close()

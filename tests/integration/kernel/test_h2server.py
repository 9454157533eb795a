"""The kernel's own HTTP/2 gRPC server (kernel.h2server) against real clients.

grpc.aio channels (plaintext, gzip, mutual TLS) and the edge's own client
(gateway.h2upstream) call handlers over raw bytes, as a generated
``add_XServicer_to_server`` would register them: the four call shapes,
metadata and status details both ways, deadlines and cancellation seen by the
handler, flow control with messages of megabytes, the receive and metadata
limits, graceful stop, mTLS with the caller's certificate in the auth
context, and the servicers every service serves beside its own (health,
reflection) plus the kernel's interceptor. A bare HTTP/2 client checks what
only the server can do (a deadline the client never enforces itself).
Every wait is for a condition, with a generous deadline: the machine may be
loaded.
"""

from __future__ import annotations

import asyncio
import re
import struct
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

from gateway.h2upstream import Channel, UpstreamError
from kernel.access import CallerPolicy
from kernel.errors import NotFound, error_info, status_details
from kernel.h2server import Server
from kernel.identity import current_caller
from kernel.interceptors import ServerInterceptor
from kernel.settings import Settings
from kernel.tls import client_ssl_context, server_ssl_context
from kernel.tokens import verifier_from_settings
from tests.support import h2probe, tokens
from tests.support.h2bare import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PROTOCOL_ERROR,
    SETTINGS,
    bare_call,
    bare_connection,
    frame,
    initial_window,
    length_prefixed,
    request_fields,
    window_update,
)
from tests.support.h2probe import (
    SERVICE,
    SERVICE_NAME,
    WAIT,
    Context,
    Raw,
    edge_call,
    probe_handler,
    same,
    serving,
    within,
)
from tests.support.mesh_tls import certs, rogue, tls_channel
from tipsmesh.devcerts import MeshIdentity

pytestmark = pytest.mark.integration
__all__ = ["certs", "rogue"]  # the fixtures, from tests/support/mesh_tls.py

MiB = 1024 * 1024
FIRST_OF_ANSWER = 100_000
PEER = re.compile(r"ipv4:127\.0\.0\.1:\d+")
# A message with what grpc-message must percent-encode: non-ASCII, and "%"
# itself (a "%41" left as it is would reach the client as "A").
MESSAGE = "it failed: 100% é ✓ %41"


class Probe(h2probe.Probe):
    """The shared probe's handlers, and those only the server's tests call."""

    failure = MESSAGE

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.active = 0
        self.peak = 0
        self.runs = 0  # how many times first_of ran

    # unary-unary

    async def nap(self, request: bytes, context: Context) -> bytes:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(float(request.decode()))
        finally:
            self.active -= 1
        return request

    async def hold(self, request: bytes, context: Context) -> bytes:
        """Waits for ``release``."""
        self._track(request, context)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled[request].set()
            raise
        return b"released"

    async def remaining(self, request: bytes, context: Context) -> bytes:
        return repr(context.time_remaining()).encode()

    async def crash(self, request: bytes, context: Context) -> bytes:
        raise RuntimeError("the database password is hunter2")

    async def set_status(self, request: bytes, context: Context) -> bytes:
        context.set_code(grpc.StatusCode.NOT_FOUND)
        context.set_details("nothing here")
        return b""

    async def caller(self, request: bytes, context: Context) -> bytes:
        found = current_caller()
        return b"" if found is None else found.user.encode()

    async def missing(self, request: bytes, context: Context) -> bytes:
        raise NotFound("things/1", reason="THING_NOT_FOUND")

    async def bad_trailing(self, request: bytes, context: Context) -> bytes:
        context.set_trailing_metadata((("x-note", "5 €"),))  # not Latin-1: cannot be sent
        return request

    async def bad_initial(self, request: bytes, context: Context) -> bytes:
        await context.send_initial_metadata((("x-note", "5 €"),))
        return request

    # unary-stream

    async def chunks(self, request: bytes, context: Context) -> AsyncIterator[bytes]:
        for i in range(int(request.decode())):
            yield bytes([i]) * MiB

    async def written(self, request: bytes, context: Context) -> None:
        await context.send_initial_metadata((("x-stream", "yes"),))
        for i in range(int(request.decode())):
            await context.write(b"w%d" % i)

    async def abort_midway(self, request: bytes, context: Context) -> AsyncIterator[bytes]:
        for i in range(3):
            yield b"%d" % i
        await context.abort(grpc.StatusCode.ABORTED, "stopped midway")

    async def endless(self, request: bytes, context: Context) -> AsyncIterator[bytes]:
        self._track(request, context)
        yield b"first"
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled[request].set()
            raise

    # stream-unary

    async def total(self, requests: AsyncIterator[bytes], context: Context) -> bytes:
        return b"%d" % sum([int(m.decode()) async for m in requests])

    async def total_read(self, requests: AsyncIterator[bytes], context: Context) -> bytes:
        result = 0
        while (message := await context.read()) is not grpc.aio.EOF:
            result += int(message.decode())
        return b"%d" % result

    async def first_of(self, requests: AsyncIterator[bytes], context: Context) -> bytes:
        """Decides after the first message, with an answer larger than a small window."""
        self.runs += 1
        async for _ in requests:
            break
        return b"r" * FIRST_OF_ANSWER

    # stream-stream

    async def bidi(self, requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
        async for message in requests:
            yield b"re:" + message


UNARY = (
    "echo",
    "sized",
    "nap",
    "hold",
    "forever",
    "remaining",
    "fail",
    "crash",
    "set_status",
    "caller",
    "missing",
    "bad_trailing",
    "bad_initial",
)
SERVER_STREAMS = ("many", "chunks", "written", "abort_midway", "endless")
CLIENT_STREAMS = ("total", "total_read", "first_of")


def handlers(probe: Probe) -> grpc.GenericRpcHandler:
    return probe_handler(
        probe,
        unary=UNARY,
        server_streams=SERVER_STREAMS,
        client_streams=CLIENT_STREAMS,
        bidi=("bidi",),
    )


@dataclass
class Served:
    probe: Probe
    server: Server
    port: int
    channel: grpc.aio.Channel


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    probe = Probe()
    async with (
        serving(handlers(probe)) as (server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        yield Served(probe, server, port, channel)


def unary(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.unary_unary(SERVICE + method)


def server_stream(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.unary_stream(SERVICE + method)


def client_stream(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.stream_unary(SERVICE + method)


def bidi_stream(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.stream_stream(SERVICE + method)


async def happened(event: asyncio.Event, what: str) -> None:
    await within(event.wait(), what)


# --- unary calls, metadata, statuses ------------------------------------------


async def test_a_unary_call_carries_metadata_both_ways_and_names_its_peer(served: Served) -> None:
    call = unary(served.channel, "echo")(
        b"hi", metadata=(("x-plain", "v a l"), ("x-key-bin", b"\x00\xff")), timeout=WAIT
    )
    assert await call == b"hi"
    assert await call.code() is grpc.StatusCode.OK
    initial = dict(tuple(await call.initial_metadata()))
    assert initial["x-first"] == "one"
    assert initial["x-raw-bin"] == b"\x00\xff"
    trailing = dict(tuple(await call.trailing_metadata()))
    assert trailing["x-last"] == "two"
    assert trailing["x-trail-bin"] == b"\x00\xff"
    seen = served.probe.seen
    sent = dict(seen["metadata"])
    assert sent["x-plain"] == "v a l"
    assert sent["x-key-bin"] == b"\x00\xff"
    assert not [key for key, _ in seen["metadata"] if key.startswith(":")]  # no pseudo-headers
    assert PEER.fullmatch(seen["peer"]), seen["peer"]
    assert seen["peer_name"] is None  # plaintext: no certificate, no name
    await happened(served.probe.finished[b"echo"], "the done callback")


async def test_an_abort_carries_code_message_and_details(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await unary(served.channel, "fail")(b"", timeout=WAIT)
    error = failed.value
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == MESSAGE
    status = status_details(error)
    assert status.message == MESSAGE
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "PROBE_FAILED"


async def test_unknown_methods_and_unexpected_exceptions(served: Served) -> None:
    for path in (SERVICE + "nope", "/no.such.Service/Method"):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await served.channel.unary_unary(path)(b"", timeout=WAIT)
        assert failed.value.code() is grpc.StatusCode.UNIMPLEMENTED, path
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await unary(served.channel, "crash")(b"", timeout=WAIT)
    assert failed.value.code() is grpc.StatusCode.UNKNOWN
    # A handler that sets its status instead of aborting.
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await unary(served.channel, "set_status")(b"", timeout=WAIT)
    assert failed.value.code() is grpc.StatusCode.NOT_FOUND
    assert failed.value.details() == "nothing here"
    assert await unary(served.channel, "echo")(b"still fine", timeout=WAIT) == b"still fine"


async def test_trailing_metadata_that_cannot_be_sent_still_ends_the_call(served: Served) -> None:
    """A value HTTP/2 cannot carry ends the call as INTERNAL, not in a call that hangs."""
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await unary(served.channel, "bad_trailing")(b"t", timeout=WAIT)
    assert failed.value.code() is grpc.StatusCode.INTERNAL, failed.value
    # Initial metadata the handler sends itself: its send fails, the call still ends.
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await unary(served.channel, "bad_initial")(b"i", timeout=WAIT)
    assert failed.value.code() is not grpc.StatusCode.DEADLINE_EXCEEDED, failed.value
    # The same connection serves the next call.
    assert await unary(served.channel, "echo")(b"next", timeout=WAIT) == b"next"
    assert len(served.server.connections) == 1


# --- deadlines and cancellation -------------------------------------------------


async def test_a_deadline_ends_the_call_and_cancels_the_handler(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await unary(served.channel, "forever")(b"d1", timeout=0.2)
    assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    await happened(served.probe.cancelled[b"d1"], "the handler to be cancelled")
    await happened(served.probe.finished[b"d1"], "the done callback")


async def test_time_remaining_follows_the_callers_timeout(served: Served) -> None:
    left = float(await unary(served.channel, "remaining")(b"", timeout=5))
    # grpc-core rounds the grpc-timeout it sends up (three significant digits: 10 ms here).
    assert 0 < left <= 5.1
    assert await unary(served.channel, "remaining")(b"") == b"None"


async def test_the_server_enforces_grpc_timeout_itself(served: Served) -> None:
    """A bare client that never cancels: the server's own timer answers DEADLINE_EXCEEDED."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await bare_call(served.port, SERVICE + "forever", b"bare", (("grpc-timeout", "200m"),))
    assert answer.get("grpc-status") == str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0]), answer
    assert loop.time() - started < WAIT
    await happened(served.probe.cancelled[b"bare"], "the handler to be cancelled")


async def test_a_cancelled_call_cancels_the_handler(served: Served) -> None:
    call = unary(served.channel, "forever")(b"c1", timeout=WAIT * 2)
    await happened(served.probe.started[b"c1"], "the handler to start")
    assert call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await happened(served.probe.cancelled[b"c1"], "the handler to be cancelled")
    await happened(served.probe.finished[b"c1"], "the done callback")
    # A server stream cancelled after its first message.
    stream = server_stream(served.channel, "endless")(b"c2", timeout=WAIT * 2)
    assert await stream.read() == b"first"
    assert stream.cancel()
    await happened(served.probe.cancelled[b"c2"], "the streaming handler to be cancelled")
    assert await unary(served.channel, "echo")(b"after", timeout=WAIT) == b"after"


async def test_a_client_that_hangs_up_cancels_its_handlers(served: Served) -> None:
    """The connection closes without RST_STREAM (the bare client just goes)."""
    bare = asyncio.ensure_future(bare_call(served.port, SERVICE + "forever", b"g1"))
    await happened(served.probe.started[b"g1"], "the handler to start")
    bare.cancel()  # its socket is closed, nothing more is sent
    with pytest.raises(asyncio.CancelledError):
        await bare
    await happened(served.probe.cancelled[b"g1"], "the handler to be cancelled")
    await happened(served.probe.finished[b"g1"], "the done callback")


# --- sizes, flow control, concurrency -------------------------------------------


async def test_megabyte_messages_both_ways_and_many_calls_at_once(served: Served) -> None:
    big = bytes(range(256)) * (3 * MiB // 256)
    assert await unary(served.channel, "echo")(big, timeout=WAIT) == big
    answer = await unary(served.channel, "sized")(str(3 * MiB).encode(), timeout=WAIT)
    assert answer == b"z" * (3 * MiB)
    answers = await asyncio.gather(
        *(unary(served.channel, "echo")(b"%d" % i, timeout=WAIT) for i in range(200))
    )
    assert answers == [b"%d" % i for i in range(200)]


async def test_a_request_over_the_receive_limit_is_resource_exhausted(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await unary(served.channel, "echo")(b"x" * (5 * MiB), timeout=WAIT)
    assert failed.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await unary(served.channel, "echo")(b"still fine", timeout=WAIT) == b"still fine"
    async with (
        serving(handlers(Probe()), max_receive_message_bytes=1024) as (_, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        assert await unary(channel, "echo")(b"x" * 1024, timeout=WAIT) == b"x" * 1024
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await unary(channel, "echo")(b"x" * 1025, timeout=WAIT)
        assert failed.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_metadata_up_to_the_limit_arrives_and_past_it_is_refused(served: Served) -> None:
    fits = "m" * 10_000
    assert await unary(served.channel, "echo")(b"a", metadata=(("x-big", fits),), timeout=WAIT)
    assert dict(served.probe.seen["metadata"])["x-big"] == fits
    edge = Channel("127.0.0.1", served.port)
    try:
        for channel_call in (
            lambda md: unary(served.channel, "echo")(b"b", metadata=md, timeout=WAIT),
            lambda md: edge_call(edge, "echo", b"b", metadata=md, timeout=WAIT),
        ):
            with pytest.raises(grpc.RpcError) as failed:
                await channel_call((("x-big", "m" * 20_000),))
            code = failed.value.code()
            assert code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL), code
        assert await unary(served.channel, "echo")(b"ok", timeout=WAIT) == b"ok"
    finally:
        await edge.close()
    # A larger limit: a header block over one frame (HEADERS then CONTINUATION).
    probe = Probe()
    async with serving(handlers(probe), max_metadata_bytes=64 * 1024) as (_, port):
        edge = Channel("127.0.0.1", port)
        try:
            large = "".join(f"{i:05d}" for i in range(8000))  # 40,000 characters
            assert await edge_call(edge, "echo", b"c", metadata=(("x-big", large),), timeout=WAIT)
            assert dict(probe.seen["metadata"])["x-big"] == large
        finally:
            await edge.close()


async def test_calls_past_max_concurrent_streams_wait_their_turn() -> None:
    probe = Probe()
    async with (
        serving(handlers(probe), max_concurrent_streams=2) as (_, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        answers = await asyncio.gather(
            *(unary(channel, "nap")(b"0.05", timeout=WAIT) for _ in range(12))
        )
    assert answers == [b"0.05"] * 12
    assert probe.peak <= 2


# --- streams ----------------------------------------------------------------------


async def test_server_streams_arrive_in_order(served: Served) -> None:
    got = [m async for m in server_stream(served.channel, "many")(b"1000", timeout=WAIT)]
    assert got == [b"%d" % i for i in range(1000)]
    chunks = [m async for m in server_stream(served.channel, "chunks")(b"20", timeout=WAIT)]
    assert [len(c) for c in chunks] == [MiB] * 20
    assert [c[0] for c in chunks] == list(range(20))
    assert all(c == c[:1] * MiB for c in chunks)
    call = server_stream(served.channel, "written")(b"5", timeout=WAIT)
    assert [m async for m in call] == [b"w%d" % i for i in range(5)]
    assert dict(tuple(await call.initial_metadata()))["x-stream"] == "yes"
    assert await call.code() is grpc.StatusCode.OK


async def test_a_stream_that_aborts_midway_gives_its_messages_then_the_status(
    served: Served,
) -> None:
    got: list[bytes] = []
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        async for message in server_stream(served.channel, "abort_midway")(b"", timeout=WAIT):
            got.append(message)
    assert got == [b"0", b"1", b"2"]
    assert failed.value.code() is grpc.StatusCode.ABORTED
    assert failed.value.details() == "stopped midway"


async def test_client_streams_and_bidi(served: Served) -> None:
    numbers = [b"%d" % i for i in range(1, 101)]
    assert await client_stream(served.channel, "total")(iter(numbers), timeout=WAIT) == b"5050"
    assert await client_stream(served.channel, "total")(iter([]), timeout=WAIT) == b"0"
    call = client_stream(served.channel, "total_read")(timeout=WAIT)
    for i in range(1, 51):
        await call.write(b"%d" % i)
    await call.done_writing()
    assert await call == b"1275"
    # Ping-pong: each answer must arrive while the request stream is still open.
    bidi = bidi_stream(served.channel, "bidi")(timeout=WAIT)
    for i in range(100):
        await bidi.write(b"%d" % i)
        assert await bidi.read() == b"re:%d" % i
    await bidi.done_writing()
    assert await bidi.read() is grpc.aio.EOF
    assert await bidi.code() is grpc.StatusCode.OK
    # Streamed requests far past the window: it reopens as the handler reads them.
    bidi = bidi_stream(served.channel, "bidi")(timeout=WAIT)
    chunks = [bytes([i]) * MiB for i in range(8)]
    for chunk in chunks:
        await bidi.write(chunk)
    await bidi.done_writing()
    assert [m async for m in bidi] == [b"re:" + chunk for chunk in chunks]


async def test_an_unknown_request_encoding_is_unimplemented(served: Served) -> None:
    answer = await bare_call(
        served.port, SERVICE + "echo", b"x", (("grpc-encoding", "snappy"),), compressed=True
    )
    assert answer.get("grpc-status") == str(grpc.StatusCode.UNIMPLEMENTED.value[0]), answer


async def test_reflection_lists_the_services_as_grpcurl_does() -> None:
    names = (SERVICE_NAME, "grpc.health.v1.Health", reflection.SERVICE_NAME)

    def add(server: Server) -> None:
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            ReflectionServicer(names), server
        )

    async with (
        serving(handlers(Probe()), extra=(add,)) as (_, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(timeout=WAIT)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        reply = await call.read()
        assert {s.name for s in reply.list_services_response.service} == set(names)
        await call.write(
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.health.v1.Health")
        )
        reply = await call.read()
        assert reply.file_descriptor_response.file_descriptor_proto
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF


# --- compression --------------------------------------------------------------------


async def test_gzip_requests_are_read() -> None:
    async with (
        serving(handlers(Probe())) as (_, port),
        grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", compression=grpc.Compression.Gzip
        ) as channel,
    ):
        text = b"a compressible request " * 20_000
        assert await unary(channel, "echo")(text, timeout=WAIT) == text
        numbers = [b"%d" % i for i in range(1, 101)]
        assert await client_stream(channel, "total")(iter(numbers), timeout=WAIT) == b"5050"
        bidi = bidi_stream(channel, "bidi")(timeout=WAIT)
        for i in range(10):
            await bidi.write(text[: 1000 + i])
            assert await bidi.read() == b"re:" + text[: 1000 + i]
        await bidi.done_writing()
        assert await bidi.code() is grpc.StatusCode.OK
        # The limit is on the message, not on its compressed form (a gzip bomb).
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await unary(channel, "echo")(b"\x00" * (5 * MiB), timeout=WAIT)
        assert failed.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


# --- both of our own sides ----------------------------------------------------------


async def test_the_edges_own_client_talks_to_it(served: Served) -> None:
    probe = served.probe
    channel = Channel("127.0.0.1", served.port)
    try:
        pending = channel.unary(SERVICE + "echo", same)(
            Raw(b"hi"), timeout=WAIT, metadata=[("x-plain", "v a l"), ("x-key-bin", b"\x00\xff")]
        )
        assert await pending == b"hi"
        initial = dict(await pending.initial_metadata())
        assert initial["x-first"] == "one"
        assert initial["x-raw-bin"] == b"\x00\xff"
        trailing = dict(pending.trailing_metadata())
        assert trailing["x-last"] == "two"
        assert trailing["x-trail-bin"] == b"\x00\xff"
        sent = dict(probe.seen["metadata"])
        assert sent["x-plain"] == "v a l"
        assert sent["x-key-bin"] == b"\x00\xff"
        assert PEER.fullmatch(probe.seen["peer"]), probe.seen["peer"]

        big = bytes(range(256)) * (3 * MiB // 256)
        assert await edge_call(channel, "echo", big, timeout=WAIT) == big
        answers = await asyncio.gather(
            *(edge_call(channel, "echo", b"%d" % i, timeout=WAIT) for i in range(200))
        )
        assert answers == [b"%d" % i for i in range(200)]

        stream = channel.server_stream(SERVICE + "many", same)(Raw(b"1000"), timeout=WAIT)
        got = []
        while (message := await stream.read()) is not grpc.aio.EOF:
            got.append(message)
        assert got == [b"%d" % i for i in range(1000)]

        with pytest.raises(UpstreamError) as failed:
            await edge_call(channel, "fail", b"", timeout=WAIT)
        assert failed.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert failed.value.details() == MESSAGE
        info = error_details_pb2.ErrorInfo()
        assert status_details(failed.value).details[0].Unpack(info)
        assert info.reason == "PROBE_FAILED"

        with pytest.raises(UpstreamError) as failed:
            await edge_call(channel, "forever", b"e1", timeout=0.3)
        assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        await happened(probe.cancelled[b"e1"], "the handler to be cancelled")
    finally:
        await channel.close()


# --- stopping ---------------------------------------------------------------------


async def test_a_graceful_stop_lets_calls_in_flight_finish_and_refuses_new_ones() -> None:
    probe = Probe()
    async with serving(handlers(probe)) as (server, port):
        target = f"127.0.0.1:{port}"
        async with grpc.aio.insecure_channel(target) as channel:
            held = asyncio.ensure_future(unary(channel, "hold")(b"h1", timeout=WAIT * 2))
            await happened(probe.started[b"h1"], "the call to reach its handler")
            # As grpc.aio's: the answer says whether the wait timed out.
            assert await server.wait_for_termination(timeout=0.01) is True  # timed out
            stopping = asyncio.ensure_future(server.stop(grace=10))
            # A call the client sends before the final GOAWAY is still taken
            # (test_h2server_graceful.py); one after it is refused.
            await h2probe.until(
                "the final GOAWAY", lambda: all(c.goaway_sent for c in server.connections)
            )
            async with grpc.aio.insecure_channel(target) as late:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await unary(late, "echo")(b"late", timeout=WAIT)
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
            assert not stopping.done()  # the held call is still in flight
            assert not held.done()
            probe.release.set()
            assert await within(held, "the held call to end") == b"released"
            await within(stopping, "stop() to return")
            assert not probe.cancelled[b"h1"].is_set()
            assert await server.wait_for_termination(timeout=WAIT) is False  # terminated


async def test_a_stop_cancels_what_outlives_its_grace() -> None:
    probe = Probe()
    async with (
        serving(handlers(probe)) as (server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stuck = asyncio.ensure_future(unary(channel, "forever")(b"s1", timeout=WAIT * 2))
        await happened(probe.started[b"s1"], "the call to reach its handler")
        await within(server.stop(grace=0.2), "stop() to return")
        await happened(probe.cancelled[b"s1"], "the handler to be cancelled")
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await within(stuck, "the stuck call to end")
        assert ended.value.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.CANCELLED,
        ), ended.value


# --- mutual TLS ---------------------------------------------------------------------


async def test_mutual_tls_names_the_caller_and_refuses_strangers(
    certs: dict[str, MeshIdentity], rogue: dict[str, MeshIdentity]
) -> None:
    probe = Probe()
    context = server_ssl_context(certs["profile"].settings())
    assert context is not None
    ca = certs["profile"].ca_file
    async with serving(handlers(probe), ssl_context=context) as (_, port):
        async with tls_channel(f"127.0.0.1:{port}", certs["gateway"], ca) as channel:
            assert await unary(channel, "echo")(b"over tls", timeout=WAIT) == b"over tls"
        auth = probe.seen["auth"]
        assert b"gateway" in auth["x509_subject_alternative_name"]
        assert auth["x509_common_name"] == [b"gateway"]
        assert auth["transport_security_type"] == [b"ssl"]
        assert probe.seen["peer_name"] == "gateway"
        assert PEER.fullmatch(probe.seen["peer"]), probe.seen["peer"]

        edge = Channel(
            "127.0.0.1",
            port,
            ssl_context=client_ssl_context(certs["gateway"].settings()),
            server_name="profile",
        )
        try:
            assert await edge_call(edge, "echo", b"edge tls", timeout=WAIT) == b"edge tls"
            assert probe.seen["peer_name"] == "gateway"
        finally:
            await edge.close()

        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await unary(plain, "echo")(b"x", timeout=WAIT)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        for who in (None, rogue["gateway"]):  # no client certificate; one from another CA
            async with tls_channel(f"127.0.0.1:{port}", who, ca) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await unary(channel, "echo")(b"x", timeout=WAIT)
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE, who


def test_no_server_tls_in_plaintext() -> None:
    assert server_ssl_context(Settings(insecure=True)) is None


# --- what every service serves beside its own ---------------------------------------


def _no_auth_channel() -> grpc.aio.Channel:
    raise AssertionError("keys come from the JWKS URL")


async def test_the_kernels_interceptor_runs_on_it() -> None:
    settings = Settings(insecure=True, jwks_url=tokens.issuer().jwks_url)
    verifier = verifier_from_settings(settings, _no_auth_channel)
    interceptor = ServerInterceptor(callers=CallerPolicy(verify_peers=False), verifier=verifier)
    try:
        async with (
            serving(handlers(Probe()), interceptors=[interceptor]) as (_, port),
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            me = tokens.as_user("u_h2server")
            assert await unary(channel, "caller")(b"", metadata=me, timeout=WAIT) == b"u_h2server"
            assert await unary(channel, "caller")(b"", timeout=WAIT) == b""
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await unary(channel, "caller")(
                    b"", metadata=(("authorization", "Bearer not-a-token"),), timeout=WAIT
                )
            assert failed.value.code() is grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await unary(channel, "missing")(b"", timeout=WAIT)
            assert failed.value.code() is grpc.StatusCode.NOT_FOUND
            info = error_info(failed.value)
            assert info is not None and info.reason == "THING_NOT_FOUND"
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await unary(channel, "crash")(b"", timeout=WAIT)
            assert failed.value.code() is grpc.StatusCode.INTERNAL
            assert "hunter2" not in (failed.value.details() or "")
            got = [m async for m in server_stream(channel, "many")(b"5", metadata=me)]
            assert got == [b"0", b"1", b"2", b"3", b"4"]
            numbers = [b"1", b"2", b"3"]
            assert await client_stream(channel, "total")(iter(numbers), timeout=WAIT) == b"6"
    finally:
        await verifier.close()


async def test_the_interceptor_checks_the_calling_process_by_its_certificate(
    certs: dict[str, MeshIdentity],
) -> None:
    callers = CallerPolicy(verify_peers=True)
    callers.add({SERVICE + "caller": frozenset({"recommender"})})
    settings = Settings(insecure=True, jwks_url=tokens.issuer().jwks_url)
    verifier = verifier_from_settings(settings, _no_auth_channel)
    interceptor = ServerInterceptor(callers=callers, verifier=verifier)
    context = server_ssl_context(certs["profile"].settings())
    handler = handlers(Probe())
    try:
        async with (
            serving(handler, interceptors=[interceptor], ssl_context=context) as (_, port),
            tls_channel(f"127.0.0.1:{port}", certs["gateway"], certs["profile"].ca_file) as channel,
        ):
            assert await unary(channel, "echo")(b"any caller", timeout=WAIT) == b"any caller"
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await unary(channel, "caller")(b"", timeout=WAIT)
            assert failed.value.code() is grpc.StatusCode.PERMISSION_DENIED
            info = error_info(failed.value)
            assert info is not None and info.reason == "CALLER_NOT_ALLOWED"
            assert "'gateway' may not call" in (failed.value.details() or "")
    finally:
        await verifier.close()


async def test_health_answers_check_and_watch() -> None:
    health = HealthServicer()

    def add(server: Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(health, server)

    serving_status = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    await health.set(SERVICE_NAME, serving_status)
    async with (
        serving(handlers(Probe()), extra=(add,)) as (_, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=WAIT)
        assert reply.status == serving_status
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=WAIT)
        assert reply.status == serving_status
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Check(health_pb2.HealthCheckRequest(service="no.such"), timeout=WAIT)
        assert failed.value.code() is grpc.StatusCode.NOT_FOUND
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=WAIT)
        assert (await watch.read()).status == serving_status
        await health.set(SERVICE_NAME, not_serving)
        assert (await watch.read()).status == not_serving
        await health.set(SERVICE_NAME, serving_status)
        assert (await watch.read()).status == serving_status
        assert watch.cancel()


# --- a bare HTTP/2 connection: what the review found -----------------------------------

OK = str(grpc.StatusCode.OK.value[0])


async def test_a_client_streaming_handler_runs_once_when_its_answer_waits_for_the_window(
    served: Served,
) -> None:
    """The handler has returned, its answer waits for the client's window, and
    only then does the client half-close: the handler must not run again."""
    probe = served.probe
    async with bare_connection(served.port, initial_window(1000)) as conn:
        conn.send(conn.request(1, SERVICE + "first_of"), frame(DATA, 0, 1, length_prefixed(b"1")))
        stream = conn.streams[1]
        # A unary answer is sent once the handler has returned: here it is, stuck.
        await conn.until(lambda: len(stream.body) >= 1000, "the answer to fill the window")
        assert len(stream.body) == 1000
        assert probe.runs == 1
        conn.send(frame(DATA, END_STREAM, 1))  # the half-close any gRPC client sends
        await conn.ping()
        assert probe.runs == 1, "the half-close ran the handler again"
        conn.send(window_update(0, 4 * FIRST_OF_ANSWER), window_update(1, 4 * FIRST_OF_ANSWER))
        await conn.until(lambda: stream.ended or stream.reset is not None, "the answer's end")
        assert stream.status == OK, stream
        assert len(stream.body) == 5 + FIRST_OF_ANSWER
        assert bytes(stream.body) == length_prefixed(b"r" * FIRST_OF_ANSWER)
        await conn.ping()
        assert probe.runs == 1


async def test_a_settings_window_raise_lets_waiting_data_out(served: Served) -> None:
    async with bare_connection(served.port, initial_window(100)) as conn:
        conn.send(
            conn.request(1, SERVICE + "sized"), frame(DATA, END_STREAM, 1, length_prefixed(b"1000"))
        )
        stream = conn.streams[1]
        await conn.until(lambda: len(stream.body) >= 100, "the answer to fill the window")
        assert len(stream.body) == 100 and not stream.ended
        # No WINDOW_UPDATE: a larger initial window is all the server is given.
        conn.send(frame(SETTINGS, 0, 0, initial_window(65535)))
        await conn.until(lambda: stream.ended, "the rest of the answer")
        assert stream.status == OK, stream
        assert bytes(stream.body) == length_prefixed(b"z" * 1000)


def _gzip_bomb(size_mib: int) -> bytes:
    """A gzip member of ``size_mib`` MiB of zeros, a few hundred kB compressed, built
    from one compressed MiB repeated (a full flush makes each piece independent)."""
    zeros = bytes(MiB)
    piece = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunk = piece.compress(zeros) + piece.flush(zlib.Z_FULL_FLUSH)
    last = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush()  # an empty final block
    crc = 0
    for _ in range(size_mib):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    trailer = struct.pack("<II", crc, (size_mib * MiB) & 0xFFFFFFFF)
    return header + chunk * size_mib + last + trailer


async def test_a_gzip_bomb_is_refused_before_it_is_inflated(served: Served) -> None:
    """256 MiB of zeros in 260 kB: refused under the 4 MiB limit without the
    server (in this process) ever holding more than a few MiB of it."""
    bomb = length_prefixed(_gzip_bomb(256), compressed=True)
    assert len(bomb) < 4 * MiB  # the compressed message is well within the limit
    async with bare_connection(served.port) as conn:
        await conn.ping()  # connected, settings exchanged
        frames = [conn.request(1, SERVICE + "echo", (("grpc-encoding", "gzip"),))]
        for at in range(0, len(bomb), 16384):
            last = at + 16384 >= len(bomb)
            frames.append(frame(DATA, END_STREAM if last else 0, 1, bomb[at : at + 16384]))
        stream = conn.streams[1]
        tracemalloc.start()
        try:
            conn.send(*frames)
            del frames
            await conn.until(lambda: stream.ended or stream.reset is not None, "the answer")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert stream.status == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]), stream
        assert peak < 64 * MiB, f"{peak / MiB:.0f} MiB allocated while the bomb was read"


@pytest.mark.parametrize(
    "bad",
    [("", "v"), ("grpc-timeout", "\u00b2S")],  # an empty name; a digit that is not ASCII
    ids=["empty-name", "superscript-timeout"],
)
async def test_a_malformed_header_ends_only_its_stream(
    served: Served, bad: tuple[str, str]
) -> None:
    probe = served.probe
    async with bare_connection(served.port) as conn:
        conn.send(
            conn.request(1, SERVICE + "hold"),
            frame(DATA, END_STREAM, 1, length_prefixed(b"in flight")),
        )
        await happened(probe.started[b"in flight"], "the call in flight to reach its handler")
        bad_block = conn.encoder.encode([*request_fields(SERVICE + "echo"), bad])
        conn.send(frame(HEADERS, END_HEADERS | END_STREAM, 3, bad_block))
        malformed = conn.streams[3]
        await conn.until(
            lambda: malformed.ended or malformed.reset is not None, "the malformed stream's end"
        )
        assert malformed.reset == PROTOCOL_ERROR or malformed.status not in (None, OK), malformed
        probe.release.set()
        flight = conn.streams[1]
        await conn.until(lambda: flight.ended, "the call in flight to end")
        assert flight.status == OK, flight
        assert bytes(flight.body) == length_prefixed(b"released")
        assert conn.goaway is None


async def test_a_continuation_without_a_header_block_ends_the_connection(served: Served) -> None:
    async with bare_connection(served.port) as conn:
        block = conn.encoder.encode(request_fields(SERVICE + "echo"))
        conn.send(
            frame(HEADERS, 0, 1, block[:5]),  # a header block in two pieces: allowed
            frame(CONTINUATION, END_HEADERS, 1, block[5:]),
            frame(DATA, END_STREAM, 1, length_prefixed(b"x")),
        )
        # A CONTINUATION that no HEADERS started (RFC 9113 6.10: PROTOCOL_ERROR).
        conn.send(
            frame(CONTINUATION, END_HEADERS, 3), frame(DATA, END_STREAM, 3, length_prefixed(b"y"))
        )
        stray = conn.streams[3]
        await conn.until(
            lambda: conn.goaway is not None or stray.ended or stray.reset is not None,
            "the connection's or the stray stream's end",
        )
        assert conn.goaway == PROTOCOL_ERROR, (conn.goaway, stray)

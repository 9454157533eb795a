"""The edge's own HTTP/2 gRPC client against real grpc.aio servers.

What the conformance suite does not reach: flow control both ways with
messages of megabytes, the 4 MiB answer limit, deadlines, a server that
allows few concurrent streams, compression, metadata and status details
both ways, a server that restarts (GOAWAY) or is down and comes back,
cancellation seen by the server, a peer that is not gRPC, and mutual TLS
with the server's name checked. Every wait is for a condition, with a
generous deadline: the machine may be loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from gateway.h2upstream import Channel, UpstreamError
from kernel.errors import status_details
from kernel.tls import client_ssl_context, server_credentials
from tests.support import h2probe
from tests.support.h2probe import SERVICE, WAIT, Raw, edge_call, probe_handler, same
from tests.support.mesh_tls import certs, rogue
from tipsmesh.devcerts import MeshIdentity

pytestmark = pytest.mark.integration
__all__ = ["certs", "rogue"]  # the fixtures, from tests/support/mesh_tls.py


class Probe(h2probe.Probe):
    """The shared probe's handlers, and ``sleep``."""

    async def sleep(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        try:
            await asyncio.sleep(float(request.decode()))
        except asyncio.CancelledError:
            self.cancelled[request].set()
            raise
        return request


def handlers(probe: Probe) -> grpc.GenericRpcHandler:
    return probe_handler(probe, unary=("echo", "sized", "sleep", "fail"), server_streams=("many",))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def serving(
    probe: Probe,
    port: int = 0,
    *,
    options: tuple[tuple[str, Any], ...] = (),
    compression: grpc.Compression | None = None,
    credentials: grpc.ServerCredentials | None = None,
) -> AsyncIterator[int]:
    server = grpc.aio.server(options=options, compression=compression)
    server.add_generic_rpc_handlers((handlers(probe),))
    address = f"127.0.0.1:{port}"
    if credentials is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, credentials)
    await server.start()
    try:
        yield bound
    finally:
        await server.stop(grace=None)


async def until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def open_calls(channel: Channel) -> int:
    connection = channel._connection
    return 0 if connection is None else len(connection.streams)


@pytest.fixture
async def probe_channel() -> AsyncIterator[tuple[Probe, Channel]]:
    probe = Probe()
    async with serving(probe) as port:
        channel = Channel("127.0.0.1", port)
        try:
            yield probe, channel
        finally:
            await channel.close()


async def test_megabyte_messages_both_ways_and_many_at_once(
    probe_channel: tuple[Probe, Channel],
) -> None:
    """Bodies far past the 64 KiB initial windows: the client must wait for WINDOW_UPDATEs."""
    _, channel = probe_channel
    big = bytes(range(256)) * (3 * 1024 * 4)  # 3 MiB
    assert await edge_call(channel, "echo", big, timeout=WAIT) == big
    answers = await asyncio.gather(
        *(edge_call(channel, "sized", str(1_000_000 + i).encode(), timeout=WAIT) for i in range(8))
    )
    assert [len(a) for a in answers] == [1_000_000 + i for i in range(8)]
    small = await asyncio.gather(
        *(edge_call(channel, "echo", b"%d" % i, timeout=WAIT) for i in range(300))
    )
    assert small == [b"%d" % i for i in range(300)]


async def test_an_answer_over_4_mib_is_resource_exhausted(
    probe_channel: tuple[Probe, Channel],
) -> None:
    _, channel = probe_channel
    with pytest.raises(UpstreamError) as failed:
        await edge_call(channel, "sized", str(4 * 1024 * 1024 + 1).encode(), timeout=WAIT)
    assert failed.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await edge_call(channel, "echo", b"still fine", timeout=WAIT) == b"still fine"


async def test_metadata_and_status_details_both_ways(probe_channel: tuple[Probe, Channel]) -> None:
    probe, channel = probe_channel
    pending = channel.unary(SERVICE + "echo", same)(
        Raw(b"hi"), timeout=WAIT, metadata=[("x-plain", "v a l"), ("x-key-bin", b"\x01\x02\xfe")]
    )
    assert await pending == b"hi"
    assert dict(await pending.initial_metadata()) == {"x-first": "one", "x-raw-bin": b"\x00\xff"}
    assert ("x-last", "two") in pending.trailing_metadata()
    sent = dict(probe.seen["metadata"])
    assert sent["x-plain"] == "v a l" and sent["x-key-bin"] == b"\x01\x02\xfe"
    with pytest.raises(UpstreamError) as failed:
        await edge_call(channel, "fail", b"", timeout=WAIT)
    error = failed.value
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "it failed: 100% é"  # percent-encoded on the wire
    status = status_details(error)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info) and info.reason == "PROBE_FAILED"


async def test_a_server_stream_is_read_message_by_message(
    probe_channel: tuple[Probe, Channel],
) -> None:
    _, channel = probe_channel
    stream = channel.server_stream(SERVICE + "many", same)(Raw(b"50"), timeout=WAIT)
    got = []
    while (message := await stream.read()) is not grpc.aio.EOF:
        got.append(message)
    assert got == [b"%d" % i for i in range(50)]


async def test_the_deadline_ends_the_call_and_the_server_sees_it(
    probe_channel: tuple[Probe, Channel],
) -> None:
    probe, channel = probe_channel
    started = time.monotonic()
    with pytest.raises(UpstreamError) as failed:
        await edge_call(channel, "sleep", b"60", timeout=0.3)
    assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < WAIT
    await until("the server to see the call end", lambda: probe.cancelled[b"60"].is_set())


async def test_cancel_resets_the_stream_and_the_server_sees_it(
    probe_channel: tuple[Probe, Channel],
) -> None:
    probe, channel = probe_channel
    pending = channel.unary(SERVICE + "sleep", same)(Raw(b"61"), timeout=WAIT * 2)
    task = asyncio.ensure_future(pending)  # type: ignore[arg-type]
    await until(
        "the call to be open", lambda: bool(channel._connection and channel._connection.streams)
    )
    assert pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until("the server to see the cancellation", lambda: probe.cancelled[b"61"].is_set())
    assert await edge_call(channel, "echo", b"after", timeout=WAIT) == b"after"


async def test_few_concurrent_streams_allowed_means_calls_wait_their_turn() -> None:
    probe = Probe()
    async with serving(probe, options=(("grpc.max_concurrent_streams", 2),)) as port:
        channel = Channel("127.0.0.1", port)
        try:
            answers = await asyncio.gather(
                *(edge_call(channel, "sleep", b"0.05", timeout=WAIT) for _ in range(12))
            )
            assert answers == [b"0.05"] * 12
        finally:
            await channel.close()


async def test_compressed_answers_are_read() -> None:
    probe = Probe()
    async with serving(probe, compression=grpc.Compression.Gzip) as port:
        channel = Channel("127.0.0.1", port)
        try:
            text = b"a compressible answer " * 2000
            assert await edge_call(channel, "echo", text, timeout=WAIT) == text
        finally:
            await channel.close()


async def test_a_restarted_server_is_reached_again_and_a_down_one_is_unavailable() -> None:
    probe = Probe()
    port = free_port()
    channel = Channel("127.0.0.1", port)
    try:
        async with serving(probe, port):
            assert await edge_call(channel, "echo", b"one", timeout=WAIT) == b"one"
            slow = asyncio.ensure_future(edge_call(channel, "sleep", b"0.5", timeout=WAIT))
            await until(
                "the slow call to be open",
                lambda: bool(channel._connection and channel._connection.streams),
            )
        # The server stopped (GOAWAY, then closed): the slow call saw it end.
        with pytest.raises(UpstreamError) as ended:
            await slow
        assert ended.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        started = time.monotonic()
        with pytest.raises(UpstreamError) as down:
            await edge_call(channel, "echo", b"two", timeout=WAIT)
        assert down.value.code() is grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 5.0  # refused at once, not at the deadline
        async with serving(probe, port):
            answer = await _retry_until_ok(
                lambda: edge_call(channel, "echo", b"three", timeout=WAIT)
            )
            assert answer == b"three"
    finally:
        await channel.close()


async def _retry_until_ok(attempt: Callable[[], Awaitable[Any]]) -> Any:
    """A client retries UNAVAILABLE (the channel backs off for a moment after a failure)."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return await attempt()
        except UpstreamError as exc:
            assert exc.code() is grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() < deadline, "the channel never reconnected"
            await asyncio.sleep(0.05)


async def test_cancel_while_connecting_ends_the_wait_at_once() -> None:
    """A server that takes the connection but never sends its SETTINGS: the call
    waits for them; cancelling it (a client that left) ends that wait now."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    channel = Channel("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        pending = channel.unary(SERVICE + "echo", same)(Raw(b"x"), timeout=WAIT)
        task = asyncio.ensure_future(pending)  # type: ignore[arg-type]
        await until("the connection to be taken", lambda: bool(accepted))
        started = time.monotonic()
        assert pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 1.0  # not the 5 s wait for SETTINGS
    finally:
        await channel.close()
        for writer in accepted:
            writer.close()
        server.close()


async def test_a_peer_that_is_not_grpc_is_an_error_not_a_hang() -> None:
    async def http1(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http1, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    channel = Channel("127.0.0.1", port)
    try:
        with pytest.raises(UpstreamError) as failed:
            await edge_call(channel, "echo", b"x", timeout=WAIT)
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "does not speak HTTP/2" in failed.value.details()
    finally:
        await channel.close()
        server.close()


async def test_mutual_tls_with_the_server_name_checked(
    certs: dict[str, MeshIdentity], rogue: dict[str, MeshIdentity]
) -> None:
    probe = Probe()
    credentials = server_credentials(certs["profile"].settings())
    async with serving(probe, credentials=credentials) as port:
        context = client_ssl_context(certs["gateway"].settings())
        assert context is not None
        good = Channel("127.0.0.1", port, ssl_context=context, server_name="profile")
        wrong_name = Channel("127.0.0.1", port, ssl_context=context, server_name="recommender")
        rogue_context = client_ssl_context(rogue["gateway"].settings())
        other_ca = Channel("127.0.0.1", port, ssl_context=rogue_context, server_name="profile")
        try:
            assert await edge_call(good, "echo", b"over tls", timeout=WAIT) == b"over tls"
            for channel in (wrong_name, other_ca):
                with pytest.raises(UpstreamError) as refused:
                    await edge_call(channel, "echo", b"x", timeout=WAIT)
                assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        finally:
            for channel in (good, wrong_name, other_ca):
                await channel.close()


def test_tls_material_is_not_needed_in_plaintext() -> None:
    from kernel.settings import Settings

    assert client_ssl_context(Settings(insecure=True)) is None

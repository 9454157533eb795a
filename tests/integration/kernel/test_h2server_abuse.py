"""kernel.h2server against abusive HTTP/2 clients, and the busy honest ones it must spare.

A bare HTTP/2 client (tests/support/h2bare.py) resets streams as fast as it
opens them (rapid reset), floods PINGs and SETTINGS, and connects without a
word: each gets GOAWAY ENHANCE_YOUR_CALM and its connection is closed. grpc.aio
channels (cancellations, deadlines, a health Watch with keepalive pings)
and the edge's own client keep theirs, under limits stricter than the
defaults. A reset stream's handler is cancelled at once and its call freed
without the cyclic collector. The windows of the limits are made longer here
(module attributes), so that a loaded machine cannot spread a test's frames
over two of them; every wait is for a condition, with a generous deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import struct
import weakref
from collections.abc import Callable, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from gateway.h2upstream import Channel, UpstreamError
from kernel import h2server
from kernel.h2server import Connection, Server
from kernel.tls import server_ssl_context
from tests.support import h2probe
from tests.support.h2bare import (
    CANCEL,
    DATA,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    PING,
    PREFACE,
    RST_STREAM,
    SETTINGS,
    BareConnection,
    bare_connection,
    frame,
    length_prefixed,
)
from tests.support.h2probe import SERVICE, SERVICE_NAME, WAIT, edge_call, serving, within
from tests.support.mesh_tls import certs
from tipsmesh.devcerts import MeshIdentity

pytestmark = pytest.mark.integration
__all__ = ["certs"]  # the fixture, from tests/support/mesh_tls.py

LONG_WINDOW_S = 3600.0  # every frame of a test falls in one window of a limit


Probe = h2probe.Probe


def handlers(probe: Probe) -> grpc.GenericRpcHandler:
    return h2probe.probe_handler(
        probe, unary=("echo", "sized", "forever"), server_streams=("many",)
    )


@pytest.fixture
def long_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(h2server, "RESET_WINDOW_S", LONG_WINDOW_S)
    monkeypatch.setattr(h2server, "PING_WINDOW_S", LONG_WINDOW_S)


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Poll what no event tells (the server's own state, a freed object), for WAIT at most."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + WAIT
    while not condition():
        if loop.time() > give_up:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def happened(event: asyncio.Event, what: str) -> None:
    await within(event.wait(), what)


def rst(stream_id: int, code: int = CANCEL) -> bytes:
    return frame(RST_STREAM, 0, stream_id, struct.pack(">I", code))


def call_frames(conn: BareConnection, stream_id: int, method: str, body: bytes) -> list[bytes]:
    """A whole unary request: HEADERS, then its one message ending the stream."""
    return [
        conn.request(stream_id, SERVICE + method),
        frame(DATA, END_STREAM, stream_id, length_prefixed(body)),
    ]


async def bare_echo(conn: BareConnection, stream_id: int) -> None:
    conn.send(*call_frames(conn, stream_id, "echo", b"e%d" % stream_id))
    stream = conn.streams[stream_id]
    await conn.until(lambda: stream.ended or stream.reset is not None, "the echo's answer")
    assert stream.status == "0", stream


async def told_to_calm_down(conn: BareConnection, why: bytes) -> None:
    await conn.until(lambda: conn.goaway is not None, "the GOAWAY")
    assert conn.goaway == ENHANCE_YOUR_CALM, conn.goaway
    assert why in conn.goaway_debug, conn.goaway_debug
    await conn.until(lambda: conn.closed, "the connection to close")


def only_connection(server: Server) -> Connection:
    assert len(server.connections) == 1, server.connections
    return next(iter(server.connections))


@contextlib.contextmanager
def no_cyclic_collector() -> Iterator[None]:
    """What must be freed is freed by reference counting alone."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# --- rapid reset --------------------------------------------------------------------


async def test_a_rapid_reset_flood_is_told_to_calm_down_and_cut_off() -> None:
    """300 streams opened and reset in one write (the CVE-2023-44487 pattern)."""
    probe = Probe()
    async with serving(handlers(probe)) as (server, port), bare_connection(port) as conn:
        await conn.ping()
        frames = []
        for n in range(h2server.MAX_EARLY_RESETS + 100):
            stream_id = 2 * n + 1
            frames += call_frames(conn, stream_id, "forever", b"f%d" % n)
            frames.append(rst(stream_id))
        conn.send(*frames)
        await told_to_calm_down(conn, b"reset")
        await eventually(lambda: not server.connections, "the server to let the connection go")
        assert server.active_streams() == 0


async def test_resets_over_many_reads_count_until_the_limit(long_windows: None) -> None:
    """Each handler runs before its stream is reset; the handler is cancelled at
    once, and the reset past the limit ends the connection."""
    probe = Probe()
    limit = 20
    async with (
        serving(handlers(probe), max_early_resets=limit) as (_, port),
        bare_connection(port) as conn,
    ):
        for n in range(limit + 1):
            key = b"r%d" % n
            conn.send(*call_frames(conn, 2 * n + 1, "forever", key))
            await happened(probe.started[key], "the handler to start")
            conn.send(rst(2 * n + 1))
            if n < limit:
                await happened(probe.cancelled[key], "the handler to be cancelled")
                await conn.ping()
                assert conn.goaway is None
        await told_to_calm_down(conn, b"reset")


async def test_cancellations_among_mostly_answered_calls_are_not_a_flood(
    long_windows: None,
) -> None:
    """Past the count, but fewer than half of the streams: a busy client whose
    callers give up on some calls."""
    probe = Probe()
    async with (
        serving(handlers(probe), max_early_resets=5) as (server, port),
        bare_connection(port) as conn,
    ):
        for n in range(20):
            key, cancelled = b"c%d" % n, 6 * n + 1
            conn.send(*call_frames(conn, cancelled, "forever", key))
            await happened(probe.started[key], "the handler to start")
            conn.send(rst(cancelled))
            await happened(probe.cancelled[key], "the handler to be cancelled")
            for answered in (cancelled + 2, cancelled + 4):
                await bare_echo(conn, answered)
                conn.send(rst(answered))  # answered already: not counted either
        await conn.ping()
        assert conn.goaway is None
        assert not only_connection(server).closed


async def test_a_reset_streams_handler_is_cancelled_at_once_and_its_call_freed(
    long_windows: None,
) -> None:
    probe = Probe()
    async with serving(handlers(probe)) as (server, port), bare_connection(port) as conn:
        conn.send(*call_frames(conn, 1, "forever", b"x1"))
        await happened(probe.started[b"x1"], "the handler to start")
        served = only_connection(server)
        with no_cyclic_collector():
            call = weakref.ref(served.streams[1])
            conn.send(rst(1))
            await happened(probe.cancelled[b"x1"], "the handler to be cancelled")
            await happened(probe.finished[b"x1"], "the done callback")
            await eventually(lambda: call() is None, "the reset call to be freed")
        assert not served.streams

        # An answer stuck on the connection's window (the bare client never opens
        # it): the reset drops it, and the call no longer waits there.
        size = 3 * 65535
        conn.send(*call_frames(conn, 3, "sized", b"%d" % size))
        stream = conn.streams[3]
        await conn.until(lambda: len(stream.body) >= 65535, "the window's worth of the answer")
        await eventually(lambda: bool(served.blocked), "the answer to wait for the window")
        with no_cyclic_collector():
            call = weakref.ref(served.blocked[0])
            conn.send(rst(3))
            await eventually(lambda: call() is None, "the reset call to be freed")
        assert not served.blocked and not served.streams
        await conn.ping()
        assert conn.goaway is None


# --- PING and SETTINGS floods --------------------------------------------------------


async def test_a_ping_flood_is_told_to_calm_down() -> None:
    async with serving(handlers(Probe())) as (_, port), bare_connection(port) as conn:
        await conn.ping()
        conn.send(*(frame(PING, 0, 0, b"%08d" % n) for n in range(50)))
        await told_to_calm_down(conn, b"ping")


async def test_pings_between_calls_are_fine(long_windows: None) -> None:
    async with serving(handlers(Probe())) as (_, port), bare_connection(port) as conn:
        for n in range(10):
            for _ in range(h2server.MAX_PINGS_WITHOUT_DATA):
                await conn.ping()
            await bare_echo(conn, 2 * n + 1)  # a call's frames: the count starts again
        assert conn.goaway is None


async def test_a_settings_flood_is_told_to_calm_down() -> None:
    async with serving(handlers(Probe())) as (_, port), bare_connection(port) as conn:
        await conn.ping()
        conn.send(*(frame(SETTINGS, 0, 0) for _ in range(150)))
        await told_to_calm_down(conn, b"SETTINGS")


async def test_settings_between_calls_are_fine() -> None:
    async with serving(handlers(Probe())) as (_, port), bare_connection(port) as conn:
        for n in range(4):  # (the first round: the bare client's own opening SETTINGS too)
            many = h2server.MAX_SETTINGS_WITHOUT_DATA - 1
            conn.send(*(frame(SETTINGS, 0, 0) for _ in range(many)))
            await bare_echo(conn, 2 * n + 1)
        await conn.ping()
        assert conn.goaway is None


# --- the preface deadline ------------------------------------------------------------


@pytest.mark.parametrize("sent", [b"", PREFACE[:10]], ids=["silent", "half-a-preface"])
async def test_a_connection_without_a_preface_is_closed(sent: bytes) -> None:
    async with (
        serving(handlers(Probe()), preface_timeout_s=0.3) as (server, port),
        bare_connection(port, preface=False) as conn,
    ):
        conn.send(sent)
        await told_to_calm_down(conn, b"preface")
        await eventually(lambda: not server.connections, "the server to let the connection go")


async def test_a_tls_connection_without_a_handshake_is_closed(
    certs: dict[str, MeshIdentity],
) -> None:
    context = server_ssl_context(certs["profile"].settings())
    assert context is not None
    async with (
        serving(handlers(Probe()), ssl_context=context, preface_timeout_s=0.3) as (_, port),
        bare_connection(port, preface=False) as conn,
    ):
        await conn.until(lambda: conn.closed, "the connection to close")


async def test_a_client_past_its_preface_is_not_timed_out() -> None:
    async with (
        serving(handlers(Probe()), preface_timeout_s=0.2) as (server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        echo = channel.unary_unary(SERVICE + "echo")
        assert await echo(b"first", timeout=WAIT) == b"first"
        served = only_connection(server)
        assert served.preface_timer is None
        await asyncio.sleep(0.6)  # past the deadline, to show nothing fires after all
        assert await echo(b"later", timeout=WAIT) == b"later"
        assert only_connection(server) is served and not served.closed


# --- honest clients, busy -------------------------------------------------------------


async def test_busy_clients_that_give_up_on_some_calls_keep_their_connections(
    long_windows: None,
) -> None:
    """Cancellations one after another among many answered calls, from grpc.aio and
    from the edge's own client: under a limit of 20 early resets (10x stricter
    than the default) and one window for the whole test, neither is cut off."""
    probe = Probe()
    async with (
        serving(handlers(probe), max_early_resets=20) as (server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        echo = channel.unary_unary(SERVICE + "echo")
        forever = channel.unary_unary(SERVICE + "forever")
        assert await echo(b"hello", timeout=WAIT) == b"hello"
        served = only_connection(server)
        for n in range(50):  # a caller that gives up while others are answered
            key = b"g%d" % n
            call = forever(key, timeout=WAIT)
            answers = await asyncio.gather(*(echo(b"%d" % i, timeout=WAIT) for i in range(4)))
            assert answers == [b"%d" % i for i in range(4)]
            await happened(probe.started[key], "the handler to start")
            assert call.cancel()
            await happened(probe.cancelled[key], "the handler to be cancelled")
        stream = channel.unary_stream(SERVICE + "many")(b"1000000", timeout=WAIT)
        assert await stream.read() == b"0"
        assert stream.cancel()
        answers = await asyncio.gather(*(echo(b"%d" % i, timeout=WAIT) for i in range(300)))
        assert answers == [b"%d" % i for i in range(300)]
        assert only_connection(server) is served and not served.closed

        edge = Channel("127.0.0.1", port)
        try:
            assert await edge_call(edge, "echo", b"edge", timeout=WAIT) == b"edge"
            from_edge = next(c for c in server.connections if c is not served)
            for n in range(50):
                key = b"edge-g%d" % n
                pending = asyncio.ensure_future(edge_call(edge, "forever", key, timeout=WAIT))
                answers = await asyncio.gather(
                    *(edge_call(edge, "echo", b"%d" % i, timeout=WAIT) for i in range(4))
                )
                assert answers == [b"%d" % i for i in range(4)]
                await happened(probe.started[key], "the handler to start")
                pending.cancel()
                await happened(probe.cancelled[key], "the handler to be cancelled")
            assert await edge_call(edge, "echo", b"edge again", timeout=WAIT) == b"edge again"
            assert from_edge in server.connections and not from_edge.closed
        finally:
            await edge.close()
        assert served in server.connections and not served.closed


async def test_calls_past_their_deadline_are_not_cancellations(long_windows: None) -> None:
    """Every call expires (a service that stalls): the clients' resets come at
    their deadlines, and none counts, under a limit of 5."""
    probe = Probe()
    async with (
        serving(handlers(probe), max_early_resets=5) as (server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        forever = channel.unary_unary(SERVICE + "forever")
        expired = await asyncio.gather(
            *(forever(b"d%d" % n, timeout=0.2) for n in range(40)), return_exceptions=True
        )
        assert all(
            isinstance(e, grpc.aio.AioRpcError) and e.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            for e in expired
        ), expired
        served = only_connection(server)
        edge = Channel("127.0.0.1", port)
        try:
            for result in await asyncio.gather(
                *(edge_call(edge, "forever", b"edge-d%d" % n, timeout=0.2) for n in range(40)),
                return_exceptions=True,
            ):
                assert isinstance(result, UpstreamError), result
                assert result.code() is grpc.StatusCode.DEADLINE_EXCEEDED, result
            assert await edge_call(edge, "echo", b"edge", timeout=WAIT) == b"edge"
            assert len(server.connections) == 2
            assert not any(conn.closed for conn in server.connections)
        finally:
            await edge.close()
        echo = channel.unary_unary(SERVICE + "echo")
        assert await echo(b"still here", timeout=WAIT) == b"still here"
        assert only_connection(server) is served and not served.closed


async def test_a_health_watch_with_keepalive_pings_keeps_its_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Watch on which nothing changes, and a client that keeps pinging (grpc-core
    sends a keepalive at most once a second): pings without data for seconds,
    past a limit of 3, never 3 within one."""
    pings = 0
    answer_ping = Connection.on_ping

    def counted(self: Connection, payload: bytes) -> None:
        nonlocal pings
        pings += 1
        answer_ping(self, payload)

    monkeypatch.setattr(Connection, "on_ping", counted)
    health = HealthServicer()
    serving_status = health_pb2.HealthCheckResponse.SERVING
    await health.set(SERVICE_NAME, serving_status)

    def add(server: Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(health, server)

    options = [
        ("grpc.keepalive_time_ms", 200),
        ("grpc.keepalive_timeout_ms", int(WAIT * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    async with (
        serving(handlers(Probe()), extra=(add,), max_pings_without_data=3) as (server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel,
    ):
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=WAIT * 2
        )
        assert (await watch.read()).status == serving_status
        served = only_connection(server)
        await eventually(lambda: pings > 6, "the keepalives")
        await health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert only_connection(server) is served and not served.closed
        assert watch.cancel()

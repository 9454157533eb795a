"""kernel.h2server's graceful stop: two GOAWAYs, as grpc-core's and Go's servers.

A bare HTTP/2 client (tests/support/h2bare.py) sees GOAWAY with the largest
stream id and a PING first, then, once it answers the PING, the final GOAWAY
with the last stream the server took: a stream it opened in between is served,
one after the final GOAWAY is refused (REFUSED_STREAM), and the connection is
half-closed only after the last answer. A client that never answers the PING
gets the final GOAWAY after GOAWAY_PING_TIMEOUT_S. grpc.aio's channels and
the edge's own client, calling two servers without pause while one of them
stops, see no failed call. Every wait is for a condition, with a generous
deadline: the machine may be loaded.
"""

from __future__ import annotations

import asyncio
import struct
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import hpack
import pytest

from gateway.h2upstream import Channel
from gateway.upstreams import Upstreams
from kernel import h2server
from tests.support import h2probe
from tests.support.h2bare import (
    ACK,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PING,
    PREFACE,
    SETTINGS,
    BareConnection,
    bare_connection,
    frame,
    length_prefixed,
)
from tests.support.h2probe import (
    SERVICE,
    SERVICE_NAME,
    WAIT,
    Context,
    edge_call,
    same,
    serving,
    within,
)

pytestmark = pytest.mark.integration

MAX_STREAM_ID = 2**31 - 1
REFUSED_STREAM = 7


class Probe(h2probe.Probe):
    def __init__(self, name: bytes = b"") -> None:
        super().__init__()
        self.name = name
        self.release = asyncio.Event()

    async def hold(self, request: bytes, context: Context) -> bytes:
        """Waits for ``release``."""
        self._track(request, context)
        await self.release.wait()
        return b"released"

    async def whoami(self, request: bytes, context: Context) -> bytes:
        await asyncio.sleep(0.001)  # a call in flight for a moment
        return self.name


def handlers(probe: Probe) -> grpc.GenericRpcHandler:
    return h2probe.probe_handler(probe, unary=("echo", "hold", "whoami"))


def call(conn: BareConnection, stream_id: int, method: str, body: bytes) -> None:
    conn.send(
        conn.request(stream_id, SERVICE + method),
        frame(DATA, END_STREAM, stream_id, length_prefixed(body)),
    )


def goaways(conn: BareConnection) -> list[tuple[str, int | bytes, int]]:
    return [seen for seen in conn.frames if seen[0] == "goaway"]


async def test_a_stop_sends_goaway_and_ping_then_the_final_goaway_once_answered() -> None:
    probe = Probe()
    async with serving(handlers(probe)) as (server, port), bare_connection(port) as conn:
        conn.answers_pings = False
        call(conn, 1, "hold", b"h1")
        await within(probe.started[b"h1"].wait(), "the held call to reach its handler")
        stopping = asyncio.ensure_future(server.stop(grace=WAIT))
        await conn.until(lambda: len(conn.frames) >= 2, "the first GOAWAY and a PING")
        first, ping = conn.frames[:2]
        assert first == ("goaway", MAX_STREAM_ID, 0), conn.frames
        assert ping[0] == "ping", conn.frames
        # Sent before the PING's answer: served.
        call(conn, 3, "echo", b"between")
        conn.send(frame(PING, ACK, 0, bytes(ping[1])))  # type: ignore[arg-type]
        await conn.until(lambda: len(goaways(conn)) >= 2, "the final GOAWAY")
        assert goaways(conn) == [first, ("goaway", 3, 0)], conn.frames
        await conn.until(lambda: conn.streams[3].ended, "the call opened in between to end")
        assert conn.streams[3].status == "0"
        assert bytes(conn.streams[3].body) == length_prefixed(b"between")
        # Past the final GOAWAY: refused, so the client may send it elsewhere.
        call(conn, 5, "echo", b"late")
        await conn.until(lambda: conn.streams[5].reset is not None, "the late call's refusal")
        assert conn.streams[5].reset == REFUSED_STREAM
        assert not conn.closed and not stopping.done()  # the held call is in flight
        probe.release.set()
        # The last answer, then the server's FIN (EOF here): nothing read is lost.
        await conn.until(lambda: conn.streams[1].ended, "the held call to end")
        assert conn.streams[1].status == "0"
        await within(conn.reading, "the server to end the connection")
        assert conn.closed
    await within(stopping, "stop() to return")
    assert not server.connections


async def test_a_client_that_never_answers_the_ping_gets_the_final_goaway_all_the_same() -> None:
    probe = Probe()
    async with serving(handlers(probe)) as (server, port), bare_connection(port) as conn:
        conn.answers_pings = False
        call(conn, 1, "echo", b"e1")
        await conn.until(lambda: conn.streams[1].ended, "the call's end")
        loop = asyncio.get_running_loop()
        began = loop.time()
        stopping = asyncio.ensure_future(server.stop(grace=WAIT))
        await conn.until(lambda: len(goaways(conn)) >= 2, "the final GOAWAY")
        told = loop.time() - began
        assert goaways(conn) == [("goaway", MAX_STREAM_ID, 0), ("goaway", 1, 0)], conn.frames
        # It waited for the PING's answer as long as the bound, no less (timers
        # never fire early); the upper bound only says it did not hang.
        assert told >= h2server.GOAWAY_PING_TIMEOUT_S * 0.9, told
        # The client never closes either: stop() closes after its own bound.
        await within(stopping, "stop() to return")
        spent = loop.time() - began
        assert spent < h2server.GOAWAY_PING_TIMEOUT_S + h2server.LINGER_AFTER_GRACE_S + 5, spent
        await within(conn.reading, "the connection to close")


async def test_a_client_that_answers_the_ping_is_told_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stop of an idle server whose client answers (grpc.aio, say) costs a
    round trip, not the PING's bound: the suite stops servers all the time. The
    bound is made longer than the test's wait, so only the PING's answer, and the
    client closing on the server's FIN, can end stop() in time."""
    monkeypatch.setattr(h2server, "GOAWAY_PING_TIMEOUT_S", WAIT * 2)
    probe = Probe()
    async with (
        serving(handlers(probe)) as (server, port),
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        assert await channel.unary_unary(SERVICE + "echo")(b"e", timeout=WAIT) == b"e"
        assert server.connections
        await within(server.stop(None), "stop() to return")
        await h2probe.until("the connection to be gone", lambda: not server.connections)


async def _steady_calls(
    one_call: Callable[[], Awaitable[bytes]], stop_one: Callable[[], Awaitable[None]]
) -> Counter[bytes]:
    """Calls from 8 callers without pause, while ``stop_one`` runs and for 100 calls
    after it returned; every failure is collected and fails the test."""
    answers: Counter[bytes] = Counter()
    failures: list[BaseException] = []
    stopped = asyncio.Event()

    async def caller() -> None:
        after = 0
        while after < 100 // 8 + 1:
            try:
                answers[await one_call()] += 1
            except Exception as exc:  # what the test is about
                failures.append(exc)
            if stopped.is_set():
                after += 1

    callers = [asyncio.ensure_future(caller()) for _ in range(8)]
    await h2probe.until("calls to both servers", lambda: len(answers) == 2)
    await within(stop_one(), "the server to stop")
    stopped.set()
    await within(asyncio.gather(*callers), "the callers to finish")
    assert not failures, failures[:3]
    return answers


async def test_grpc_aio_calls_during_a_stop_are_answered_or_sent_to_the_other_server() -> None:
    a, b = Probe(b"a"), Probe(b"b")
    async with serving(handlers(a)) as (_, a_port), serving(handlers(b)) as (b_server, b_port):
        target = f"ipv4:127.0.0.1:{a_port},127.0.0.1:{b_port}"
        options = [("grpc.lb_policy_name", "round_robin"), ("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            whoami = channel.unary_unary(SERVICE + "whoami")

            async def one_call() -> bytes:
                answer: bytes = await whoami(b"", timeout=WAIT)
                return answer

            answers = await _steady_calls(one_call, lambda: b_server.stop(grace=WAIT))
    assert answers[b"a"] and answers[b"b"], answers


async def test_the_edge_calls_during_a_stop_are_answered_or_sent_to_the_other_server() -> None:
    a, b = Probe(b"a"), Probe(b"b")
    async with serving(handlers(a)) as (_, a_port), serving(handlers(b)) as (b_server, b_port):
        upstreams = Upstreams({}, services={SERVICE_NAME: f"127.0.0.1:{a_port},127.0.0.1:{b_port}"})
        whoami: Any = upstreams.unary(SERVICE_NAME, SERVICE + "whoami", same)
        try:

            async def one_call() -> bytes:
                answer: bytes = await whoami(h2probe.Raw(b""), timeout=WAIT)
                return answer

            answers = await _steady_calls(one_call, lambda: b_server.stop(grace=WAIT))
        finally:
            await upstreams.close()
    assert answers[b"a"] and answers[b"b"], answers


# --- the edge's client against a server that stops in two steps ----------------------


class _TwoStepServer:
    """A bare HTTP/2 server whose frames a test writes: it records the streams each
    connection opens and answers a stream when told."""

    def __init__(self) -> None:
        self.connections: list[tuple[asyncio.StreamWriter, list[int]]] = []
        self.changed = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        opened: list[int] = []
        self.connections.append((writer, opened))
        writer.write(frame(SETTINGS, 0, 0))
        try:
            await reader.readexactly(len(PREFACE))
            while True:
                head = await reader.readexactly(9)
                payload = await reader.readexactly(int.from_bytes(head[:3], "big"))
                kind, flags = head[3], head[4]
                stream_id = int.from_bytes(head[5:], "big") & MAX_STREAM_ID
                if kind == SETTINGS and not flags & ACK:
                    writer.write(frame(SETTINGS, ACK, 0))
                elif kind == HEADERS:
                    opened.append(stream_id)
                    self.changed.set()
                del payload
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    def answer(self, writer: asyncio.StreamWriter, stream_id: int, body: bytes) -> None:
        encoder = hpack.Encoder()
        head = encoder.encode([(":status", "200"), ("content-type", "application/grpc")])
        trailers = encoder.encode([("grpc-status", "0")])
        writer.write(
            frame(HEADERS, END_HEADERS, stream_id, head)
            + frame(DATA, 0, stream_id, length_prefixed(body))
            + frame(HEADERS, END_HEADERS | END_STREAM, stream_id, trailers)
        )

    @staticmethod
    def goaway(writer: asyncio.StreamWriter, last: int) -> None:
        writer.write(frame(GOAWAY, 0, 0, struct.pack(">II", last, 0)))


async def test_the_edge_keeps_calls_past_the_first_goaway_and_resends_those_past_the_last() -> None:
    fake = _TwoStepServer()
    listener = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    channel = Channel("127.0.0.1", port)
    try:
        first = asyncio.ensure_future(edge_call(channel, "echo", b"1", timeout=WAIT))
        second = asyncio.ensure_future(edge_call(channel, "echo", b"3", timeout=WAIT))
        await h2probe.until("both calls to arrive", lambda: _opened(fake, 0) == [1, 3])
        writer, _ = fake.connections[0]
        fake.goaway(writer, MAX_STREAM_ID)
        await h2probe.until("the first GOAWAY to be read", lambda: not _usable(channel))
        assert not first.done() and not second.done()  # still the server's to answer
        fake.goaway(writer, 1)  # stream 3 was never processed: sent again, elsewhere
        await h2probe.until(
            "the call past the final GOAWAY on a new connection",
            lambda: _opened(fake, 1) == [1],
        )
        fake.answer(fake.connections[1][0], 1, b"three")
        fake.answer(writer, 1, b"one")
        assert await within(first, "the first call") == b"one"
        assert await within(second, "the second call") == b"three"
    finally:
        await channel.close()
        for writer, _ in fake.connections:
            writer.close()
        listener.close()


def _opened(fake: _TwoStepServer, index: int) -> list[int] | None:
    return fake.connections[index][1] if len(fake.connections) > index else None


def _usable(channel: Channel) -> bool:
    conn = channel._connection
    return conn is not None and conn.usable()

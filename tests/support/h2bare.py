"""A bare HTTP/2 client, for what only a server can be tested on: frames no
gRPC client sends, and a client that never cancels nor times out by itself.

``bare_connection`` opens a connection whose frames a test writes (``frame``,
``BareConnection.request``); it answers SETTINGS and PING, never opens its
receive window by itself, and records what arrives by stream (and a GOAWAY's
code and debug data; every GOAWAY and the server's PINGs in ``frames``). With
``answers_pings = False`` it leaves the server's PINGs unanswered. With
``preface=False`` it sends nothing at all, not even answers. ``bare_call``
makes one whole call on one.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import hpack
import pytest

from tests.support.h2probe import within

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, CONTINUATION = 0, 1, 3, 4, 6, 7, 9
WINDOW_UPDATE = 8
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
PROTOCOL_ERROR, CANCEL, ENHANCE_YOUR_CALM = 1, 8, 0xB
S_INITIAL_WINDOW_SIZE = 4
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream_id)
        + payload
    )


def length_prefixed(body: bytes, *, compressed: bool = False) -> bytes:
    """A gRPC message as DATA frames carry it."""
    return bytes([compressed]) + struct.pack(">I", len(body)) + body


def request_fields(path: str, authority: str = "127.0.0.1") -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]


def initial_window(size: int) -> bytes:
    """A SETTINGS payload: the initial window of every stream."""
    return struct.pack(">HI", S_INITIAL_WINDOW_SIZE, size)


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment))


@dataclass
class BareStream:
    """What one stream of a bare connection received."""

    blocks: list[dict[str, str]] = field(default_factory=list)  # header blocks, decoded
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: int | None = None

    @property
    def status(self) -> str | None:
        return self.blocks[-1].get("grpc-status") if self.ended and self.blocks else None


class BareConnection:
    """A client that sends the frames a test writes, answers SETTINGS and PING,
    never opens its receive window by itself, and records what arrives."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, answers: bool = True
    ) -> None:
        self.reader, self.writer = reader, writer
        self.answers = answers  # SETTINGS and PING are answered
        self.encoder = hpack.Encoder()
        self.streams: defaultdict[int, BareStream] = defaultdict(BareStream)
        self.goaway: int | None = None
        self.goaway_debug = b""
        self.answers_pings = True
        # GOAWAYs as ("goaway", last stream id, code), the server's PINGs as ("ping", payload)
        self.frames: list[tuple[str, int | bytes, int]] = []
        self.pongs = 0
        self.closed = False
        self.changed = asyncio.Event()
        self.reading = asyncio.ensure_future(self._read())

    def send(self, *frames: bytes) -> None:
        self.writer.write(b"".join(frames))

    def answer(self, *frames: bytes) -> None:
        if self.answers:
            self.send(*frames)

    def request(self, stream_id: int, path: str, headers: Sequence[tuple[str, str]] = ()) -> bytes:
        """The HEADERS frame of a call (its stream stays open)."""
        block = self.encoder.encode([*request_fields(path), *headers])
        return frame(HEADERS, END_HEADERS, stream_id, block)

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        async def wait() -> None:
            while not condition():
                if self.closed:
                    pytest.fail(f"the connection closed before {what}")
                self.changed.clear()
                await self.changed.wait()

        await within(wait(), what)

    async def ping(self) -> None:
        """A round trip: the server has handled every frame sent before it."""
        expected = self.pongs + 1
        self.send(frame(PING, 0, 0, b"\0" * 8))
        await self.until(lambda: self.pongs >= expected, "the PING's answer")

    async def _read(self) -> None:
        decoder = hpack.Decoder()
        block, block_ends_stream = b"", False
        try:
            while True:
                head = await self.reader.readexactly(9)
                kind, flags = head[3], head[4]
                stream_id = int.from_bytes(head[5:], "big") & 0x7FFFFFFF
                payload = await self.reader.readexactly(int.from_bytes(head[:3], "big"))
                stream = self.streams[stream_id]
                if kind == SETTINGS and not flags & ACK:
                    self.answer(frame(SETTINGS, ACK, 0))
                elif kind == PING:
                    if flags & ACK:
                        self.pongs += 1
                    else:
                        self.frames.append(("ping", payload, 0))
                        if self.answers_pings:
                            self.answer(frame(PING, ACK, 0, payload))
                elif kind == GOAWAY:
                    self.goaway = int.from_bytes(payload[4:8], "big")
                    self.goaway_debug = payload[8:]
                    last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                    self.frames.append(("goaway", last, self.goaway))
                elif kind == RST_STREAM:
                    stream.reset = int.from_bytes(payload[:4], "big")
                elif kind in (HEADERS, CONTINUATION):
                    if kind == HEADERS:
                        if flags & PADDED:
                            payload = payload[1 : len(payload) - payload[0]]
                        if flags & PRIORITY:
                            payload = payload[5:]
                        block_ends_stream = bool(flags & END_STREAM)
                    block += payload
                    if flags & END_HEADERS:
                        # raw: hpack's types say bytes pairs, true only when raw (UTF-8 as hpack's)
                        fields = decoder.decode(block, raw=True)
                        stream.blocks.append({n.decode(): v.decode() for n, v in fields})
                        stream.ended = block_ends_stream
                        block = b""
                elif kind == DATA:
                    stream.body += payload
                    stream.ended = bool(flags & END_STREAM)
                self.changed.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed = True
            self.changed.set()


@contextlib.asynccontextmanager
async def bare_connection(
    port: int, settings: bytes = b"", *, preface: bool = True
) -> AsyncIterator[BareConnection]:
    """A connection that opens with the preface and ``settings`` (``preface=False``:
    a client that connects and says nothing, not even answers)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if preface:
        writer.write(PREFACE + frame(SETTINGS, 0, 0, settings))
    conn = BareConnection(reader, writer, answers=preface)
    try:
        yield conn
    finally:
        conn.reading.cancel()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def bare_call(
    port: int,
    path: str,
    body: bytes,
    headers: Sequence[tuple[str, str]] = (),
    *,
    compressed: bool = False,
) -> dict[str, str]:
    """One call on stream 1 from a client that never cancels nor times out by itself
    (cancelled, it just closes its socket).

    Returns the fields of the answer's header blocks (headers and trailers
    merged), ``rst`` when the stream was reset, ``goaway`` when the connection
    was closed.
    """
    async with bare_connection(port) as conn:
        fields = [*request_fields(path, f"127.0.0.1:{port}"), *headers]
        conn.send(
            frame(HEADERS, END_HEADERS, 1, conn.encoder.encode(fields)),
            frame(DATA, END_STREAM, 1, length_prefixed(body, compressed=compressed)),
        )
        stream = conn.streams[1]
        await conn.until(
            lambda: stream.ended or stream.reset is not None or conn.goaway is not None,
            "the call's end",
        )
    answer: dict[str, str] = {}
    for block in stream.blocks:
        answer.update(block)
    if stream.reset is not None:
        answer["rst"] = str(stream.reset)
    if conn.goaway is not None:
        answer["goaway"] = str(conn.goaway)
    return answer

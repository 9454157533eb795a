"""The HTTP/2 client's frame handling, fed bytes directly (no server needed)."""

from __future__ import annotations

from typing import Any

import hpack
import pytest

from gateway.h2upstream import (
    END_HEADERS,
    END_STREAM,
    HEADERS,
    SETTINGS,
    Connection,
    frame,
    literal,
    timeout_header,
)

pytestmark = pytest.mark.unit


class Wire:
    """A transport that keeps what was written."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def connected() -> Connection:
    conn = Connection()
    conn.connection_made(Wire())  # type: ignore[arg-type]
    conn.data_received(frame(SETTINGS, 0, 0))
    return conn


def same(data: bytes) -> Any:
    return data


async def test_repeated_header_blocks_decode_as_the_dynamic_table_says() -> None:
    """A block cached as unchanging must not outlive a change to the table it refers to."""
    conn = connected()
    encoder = hpack.Encoder()
    grpc_headers = [(":status", "200"), ("content-type", "application/grpc")]

    def headers_of(block: bytes) -> Any:
        stream = conn.open_stream(same)
        conn.data_received(frame(HEADERS, END_HEADERS, stream.id, block))
        return stream.initial

    assert headers_of(encoder.encode([*grpc_headers, ("x-v", "one")])) == [("x-v", "one")]
    indexed = encoder.encode([*grpc_headers, ("x-v", "one")])  # only table references now
    assert headers_of(indexed) == [("x-v", "one")]
    assert headers_of(indexed) == [("x-v", "one")]  # from the cache
    assert headers_of(encoder.encode([*grpc_headers, ("x-v", "two")])) == [("x-v", "two")]
    # The same bytes again: the newest entry (index 62) is now "x-v: two".
    assert ("x-v", "two") in headers_of(indexed)


async def test_a_trailers_only_answer_has_no_header_metadata() -> None:
    conn = connected()
    stream = conn.open_stream(same)
    block = hpack.Encoder().encode(
        [
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("grpc-status", "5"),
            ("grpc-message", "no%20such%20thing"),
            ("x-why", "gone"),
        ]
    )
    conn.data_received(frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block))
    assert stream.initial == ()
    assert stream.status is not None
    assert stream.status.code().name == "NOT_FOUND"
    assert stream.status.details() == "no such thing"
    assert ("x-why", "gone") in stream.status.trailing_metadata()


async def test_an_http_error_status_maps_to_its_grpc_code() -> None:
    conn = connected()
    stream = conn.open_stream(same)
    block = hpack.Encoder().encode([(":status", "503"), ("content-type", "text/plain")])
    conn.data_received(frame(HEADERS, END_HEADERS, stream.id, block))
    assert stream.status is not None and stream.status.code().name == "UNAVAILABLE"


def test_requests_are_encoded_as_literals_any_decoder_reads() -> None:
    block = literal(b":path", b"/a.B/C") + timeout_header(2.5) + timeout_header(10**9)
    assert hpack.Decoder().decode(block) == [
        (":path", "/a.B/C"),
        ("grpc-timeout", "2500m"),
        ("grpc-timeout", "99999999S"),
    ]
    long_value = b"v" * 300  # lengths past the 7-bit prefix take more bytes
    assert hpack.Decoder().decode(literal(b"x-long", long_value)) == [("x-long", "v" * 300)]

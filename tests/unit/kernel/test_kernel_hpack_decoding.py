"""kernel.h2wire.HeaderDecoder decodes what hpack decodes, block after block.

Its fast path reads blocks that leave HPACK's dynamic table unchanged and
hands every other block to hpack; both must agree on every block of a
connection's sequence, whatever the encoder chose (indexing, Huffman,
never-indexed fields, table size updates), and refuse what hpack refuses.
"""

from __future__ import annotations

import random

import hpack
import pytest
from hpack import HeaderTuple, NeverIndexedHeaderTuple

from kernel.h2wire import HeaderDecoder, literal

pytestmark = pytest.mark.unit


def _reference(decoder: hpack.Decoder, block: bytes) -> list[tuple[str, str]]:
    return [(str(name), str(value)) for name, value in decoder.decode(block)]


def _varying(rng: random.Random, name: str, value: str) -> tuple[str, str] | HeaderTuple:
    """A field whose value changes per call: mostly left out of the table, as
    grpc-core sends it (hpack's encoder can only say never-indexed), else indexed."""
    return NeverIndexedHeaderTuple(name, value) if rng.random() < 0.8 else (name, value)


def _request_headers(rng: random.Random, i: int) -> list[tuple[str, str] | HeaderTuple]:
    headers: list[tuple[str, str] | HeaderTuple] = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", rng.choice(["/a.B/C", "/tips.recommender.v1.RecommenderService/DecideTips"])),
        (":authority", "127.0.0.1:50051"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        _varying(rng, "grpc-timeout", f"{rng.randint(1, 99999)}m"),
        ("user-agent", "grpc-python-asyncio/1.85.1"),
    ]
    token = "Bearer " + "".join(rng.choice("abcdefXYZ0123456789-_.") for _ in range(200))
    headers.append(NeverIndexedHeaderTuple("authorization", token))
    headers.append(_varying(rng, "traceparent", f"00-{i:032x}-{i:016x}-01"))
    if rng.random() < 0.3:
        headers.append(_varying(rng, "x-note", "é ✓ " + str(i)))  # UTF-8 in a value
    if rng.random() < 0.3:
        headers.append(("x-raw-bin", "AAEC"))
    return headers


@pytest.mark.parametrize("huffman", [True, False])
def test_every_block_of_a_connection_decodes_as_hpack_decodes_it(huffman: bool) -> None:
    rng = random.Random(7)
    encoder = hpack.Encoder()
    ours, reference = HeaderDecoder(64 * 1024), hpack.Decoder()
    reference.max_header_list_size = 64 * 1024
    fast = 0
    for i in range(400):
        if i == 150:
            encoder.header_table_size = 256  # a size update mid-connection: table evictions
        block = encoder.encode(_request_headers(rng, i), huffman=huffman)
        fast += ours._read(block) is not None
        assert ours.decode(block) == _reference(reference, block)
    assert fast > 0  # the fast path was taken, and agreed


def test_literals_without_indexing_take_the_fast_path_and_leave_the_table_alone() -> None:
    block = literal(b"authorization", b"Bearer abc") + literal(b"grpc-timeout", b"20m")
    decoder = HeaderDecoder(1024)
    assert decoder._read(block) == [("authorization", "Bearer abc"), ("grpc-timeout", "20m")]
    assert decoder.decode(block) == _reference(hpack.Decoder(), block)


@pytest.mark.parametrize(
    "block",
    [
        b"\x80",  # index 0
        b"\xff\xff\xff\xff\xff\xff\x7f",  # an index past any table (and a huge integer)
        b"\x00\x05ab",  # a name longer than the block
        b"\x00\x01a\x7f",  # a length whose continuation bytes are missing
        b"\x00\x01a\x02\xff\xfe",  # a value that is not UTF-8
    ],
)
def test_malformed_blocks_are_refused_as_hpack_refuses_them(block: bytes) -> None:
    with pytest.raises(Exception):  # noqa: B017 - whichever error hpack raises
        _reference(hpack.Decoder(), block)
    with pytest.raises(Exception):  # noqa: B017
        HeaderDecoder(1024).decode(block)


def test_a_header_list_over_the_limit_is_refused() -> None:
    block = literal(b"x-big", b"v" * 2000)
    with pytest.raises(hpack.OversizedHeaderListError):
        HeaderDecoder(1024).decode(block)
    assert HeaderDecoder(4096).decode(block) == [("x-big", "v" * 2000)]


def _indexed(name: bytes, value: bytes) -> bytes:
    """A field as 'literal with incremental indexing, new name' (RFC 7541 6.2.1)."""
    return b"\x40" + literal(name, value)[1:]


def test_re_adding_the_newest_entry_to_a_full_table_clears_the_cache() -> None:
    """The table's size and its newest entry's value stay the same, yet an entry
    was evicted: a block cached before must not decode as it did."""
    a, b, c = [(n, n * 1267) for n in (b"a", b"b", b"c")]  # 1,300 octets each: 3 fill 4,096
    ours, reference = HeaderDecoder(65536), hpack.Decoder()

    def both(block: bytes) -> list[tuple[str, str]]:
        got = ours.decode(block)
        assert got == _reference(reference, block)
        return got

    for entry in (c, b, a):
        both(_indexed(*entry))
    oldest = b"\xc0"  # index 64: the third dynamic entry, c
    assert both(oldest) == [("c", "c" * 1267)]  # and now cached
    both(_indexed(*a))  # a again: [a, a, b], c evicted
    assert both(oldest) == [("b", "b" * 1267)]

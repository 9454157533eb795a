"""gRPC over HTTP/2, the parts both our sides share: frames, HPACK, messages.

The edge's client (``gateway.h2upstream``) and every service's server
(``kernel.h2server``) speak gRPC's HTTP/2 mapping on the loop's own
transport instead of through grpc-core (decisions 27 and 38). What they
share is here: frame layout and constants (RFC 9113), header fields written
as HPACK literals without indexing (so an encoder keeps no state), the
decoding of header blocks with a cache for blocks that leave HPACK's dynamic
table as it was, metadata values (``-bin`` keys are base64 on the wire),
and compressed messages.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import grpc
import hpack
from hpack.huffman_table import decode_huffman

Metadata = Sequence[tuple[str, str | bytes]]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
# SETTINGS identifiers (RFC 9113 6.5.2).
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS = 1, 2, 3
S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = 4, 5, 6
# Error codes (RFC 9113 7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
REFUSED_STREAM, CANCEL, ENHANCE_YOUR_CALM = 7, 8, 0xB

DEFAULT_WINDOW = 65535
MAX_CACHED_BLOCK = 1024  # header blocks larger than this are decoded each time
MAX_FRAME = 16384  # the largest frame we allow (SETTINGS_MAX_FRAME_SIZE left at its default)
MAX_STREAM_ID = 2**31 - 1
MAX_WINDOW = 2**31 - 1
MAX_QUEUED_FRAMES = 10_000  # a peer that pings or resets without end is cut off

FRAME = struct.Struct(">I B I")  # length (24 bits) + type in the first word, flags, stream
U32 = struct.Struct(">I")
CODES = {code.value[0]: code for code in grpc.StatusCode}

log = logging.getLogger("tips.h2")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return FRAME.pack((len(payload) << 8) | kind, flags, stream_id) + payload


def unpad(payload: bytes) -> bytes:
    if not payload:
        return payload
    pad = payload[0]
    return payload[1 : len(payload) - pad] if pad < len(payload) else b""


# --- HPACK encoding: literals, never indexed ----------------------------------


def _hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """A header field as 'literal without indexing, new name' (RFC 7541 6.2.2)."""
    return b"\x00" + _hpack_int(len(name), 7, 0) + name + _hpack_int(len(value), 7, 0) + value


def metadata_block(metadata: Metadata) -> bytes:
    parts = []
    for key, value in metadata:
        if isinstance(value, bytes):
            value = base64.b64encode(value).rstrip(b"=").decode("ascii")
        parts.append(literal(key.encode("ascii"), value.encode("latin-1")))
    return b"".join(parts)


def metadata_item(name: str, value: str) -> tuple[str, str | bytes]:
    """A received header as metadata: ``-bin`` values decoded to bytes."""
    if name.endswith("-bin"):
        try:
            return name, base64.b64decode(value + "=" * (-len(value) % 4))
        except ValueError:
            return name, b""
    return name, value


# --- HPACK decoding -----------------------------------------------------------


class HeaderDecoder:
    """One connection's HPACK decoder.

    Most blocks a gRPC peer sends leave the dynamic table as it was: fields
    already indexed, and literals *without indexing* (a client's
    ``authorization``, ``grpc-timeout`` and ``traceparent``; a server's
    repeated ``:status 200`` and ``grpc-status``). Those are decoded here
    (``_read``: a few slices, about a third of what ``hpack`` spends); a block
    that changes the table (incremental indexing, a size update) goes to
    ``hpack`` whole, which keeps the table. Blocks seen before decode the
    same again while the table is unchanged, so they are remembered too.
    """

    def __init__(self, max_header_list: int) -> None:
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = max_header_list
        self._decoder.max_allowed_table_size = 4096
        self._max_header_list = max_header_list
        self._unchanging: dict[bytes, list[tuple[str, str]]] = {}

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        """The block's fields; hpack's errors propagate (the connection cannot go on)."""
        fields = self._unchanging.get(block)
        if fields is not None:
            return fields
        fields = self._read(block)
        if fields is not None:
            # Bounded: varying blocks, or large ones, cannot make it hold much.
            if len(block) <= MAX_CACHED_BLOCK and len(self._unchanging) < 256:
                self._unchanging[block] = fields
            return fields
        table = self._decoder.header_table
        before = _table_state(table)
        fields = [(str(name), str(value)) for name, value in self._decoder.decode(block)]
        if not _same_state(_table_state(table), before):
            self._unchanging.clear()  # what they decode to may have changed
        return fields

    def _read(self, block: bytes) -> list[tuple[str, str]] | None:
        """The fields of a block that leaves the table unchanged; None for any other."""
        table = self._decoder.header_table
        fields: list[tuple[str, str]] = []
        size, end, at = 0, len(block), 0
        while at < end:
            first = block[at]
            if first & 0x80:  # indexed field
                index, at = _read_int(block, at, 7)
                name_b, value_b = table.get_by_index(index)
                name, value = name_b.decode(), value_b.decode()
            elif first & 0xE0 == 0:  # literal without indexing (0000) or never indexed (0001)
                index, at = _read_int(block, at, 4)
                if index:
                    name = table.get_by_index(index)[0].decode()
                else:
                    name, at = _read_string(block, at)
                value, at = _read_string(block, at)
            else:  # incremental indexing or a table size update: hpack's
                return None
            size += _octets(name) + _octets(value) + 32
            if size > self._max_header_list:
                return None  # hpack raises the error
            fields.append((name, value))
        return fields


def _octets(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def _read_int(block: bytes, at: int, prefix_bits: int) -> tuple[int, int]:
    limit = (1 << prefix_bits) - 1
    value = block[at] & limit
    at += 1
    if value < limit:
        return value, at
    shift = 0
    while True:
        if at >= len(block) or shift > 28:
            raise hpack.HPACKDecodingError("malformed integer")
        byte = block[at]
        at += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _read_string(block: bytes, at: int) -> tuple[str, int]:
    if at >= len(block):
        raise hpack.HPACKDecodingError("a string runs past the block")
    huffman = block[at] & 0x80
    length, at = _read_int(block, at, 7)
    if at + length > len(block):
        raise hpack.HPACKDecodingError("a string runs past the block")
    raw = block[at : at + length]
    if huffman:
        raw = decode_huffman(raw)
    return raw.decode(), at + length  # as hpack: UTF-8, or the block is refused


def _same_state(a: tuple[int, int, object], b: tuple[int, int, object]) -> bool:
    # The newest entry by identity: an equal field added again is still a change.
    return a[0] == b[0] and a[1] == b[1] and a[2] is b[2]


def _table_state(table: Any) -> tuple[int, int, object]:
    """What changes when a block adds to (or resizes) HPACK's dynamic table: its
    size, its limit, and its newest entry (new entries are new objects)."""
    entries = table.dynamic_entries
    return len(entries), table.maxsize, entries[0] if entries else None


# --- messages -----------------------------------------------------------------


class TooLarge(ValueError):
    """A compressed message inflates past the limit."""


def decompress(payload: bytes, encoding: str, limit: int) -> bytes:
    """Inflate a message, never past ``limit`` bytes (TooLarge): a small request
    must not make the process allocate gigabytes before its size is known."""
    if encoding == "gzip":
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        inflater = zlib.decompressobj()
    else:
        raise ValueError(f"compressed with {encoding or 'no grpc-encoding'}")
    out = inflater.decompress(payload, limit + 1)
    if len(out) > limit or inflater.unconsumed_tail:
        raise TooLarge(f"inflates past {limit} bytes")
    return out


def framed(message: bytes) -> bytes:
    """A message with gRPC's length prefix, uncompressed."""
    return b"\x00" + U32.pack(len(message)) + message


# --- frames in: what both ends do the same --------------------------------------


class FrameHandler(asyncio.Protocol):
    """The frame dispatch both our HTTP/2 ends share (the edge's client,
    ``gateway.h2upstream.Connection``; every service's server,
    ``kernel.h2server.Connection``): bytes cut into frames (``data_received``),
    header blocks put together across CONTINUATION frames and decoded in
    arrival order (HPACK's table is the connection's), PING answered
    (``on_ping``; an answer to ours is ``on_ping_ack``), PUSH_PROMISE
    refused. The rest is each end's: ``opening`` (what the peer must send
    first: a client's preface, a server's SETTINGS), ``on_fields`` (a
    decoded header block), ``on_data`` (the payload unpadded, the
    connection's window already counted), ``on_settings``,
    ``on_window_update``, ``on_reset``, ``on_goaway``, ``write``, ``flush``
    (what ``write`` queued goes out) and ``fail_connection`` (which sets
    ``closed``)."""

    peer = "unknown"  # for the log

    def __init__(self, max_header_block: int, receive_window: int) -> None:
        self.decoder = HeaderDecoder(max_header_block)
        self.max_header_block = max_header_block
        # The connection's receive window, reopened once half of it has arrived.
        self.receive_window = receive_window
        self.recv_unacked = 0
        # A header block split over CONTINUATION frames.
        self.continuing_id = 0
        self.continued_block = bytearray()
        self.continued_end_stream = False
        self.inbox = bytearray()  # bytes of a frame not yet whole
        self.opened = False  # the peer's opening (``opening``) was right
        self.closed = False
        self.outbox: list[bytes] = []  # frames queued by ``write``

    def data_received(self, data: bytes) -> None:
        inbox = self.inbox
        inbox += data
        offset = 0
        if not self.opened:
            offset = self.opening(inbox)
            if offset < 0:
                return
            self.opened = True
        size = len(inbox)
        while size - offset >= 9:
            head, flags, stream_id = FRAME.unpack_from(inbox, offset)
            length = head >> 8
            if length > MAX_FRAME:
                self.fail_connection(PROTOCOL_ERROR, "frame larger than allowed")
                return
            if size - offset - 9 < length:
                break
            payload = bytes(inbox[offset + 9 : offset + 9 + length])
            offset += 9 + length
            try:
                self.on_frame(head & 0xFF, flags, stream_id & MAX_STREAM_ID, payload)
            except Exception:  # a bug of ours: this connection ends, the process goes on
                log.exception("a frame could not be handled", extra={"peer": self.peer})
                self.fail_connection(INTERNAL_ERROR, "internal error")
            if not self.closed and len(self.outbox) > MAX_QUEUED_FRAMES:
                self.fail_connection(ENHANCE_YOUR_CALM, "too many frames queued")
            if self.closed:
                return
        del inbox[:offset]
        self.flush()

    def on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.continuing_id and (kind != CONTINUATION or stream_id != self.continuing_id):
            self.fail_connection(PROTOCOL_ERROR, "a header block was interrupted")
            return
        if kind == DATA:
            size = len(payload)  # padding included: it counts against the windows
            self.recv_unacked += size
            if self.recv_unacked >= self.receive_window // 2:
                self.write(frame(WINDOW_UPDATE, 0, 0, U32.pack(self.recv_unacked)))
                self.recv_unacked = 0
            self.on_data(flags, stream_id, unpad(payload) if flags & PADDED else payload, size)
        elif kind == HEADERS:
            self.on_headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            self.on_continuation(flags, stream_id, payload)
        elif kind == SETTINGS:
            if not flags & ACK:
                self.on_settings(payload)
        elif kind == PING:
            if flags & ACK:
                self.on_ping_ack(payload)
            else:
                self.on_ping(payload)
        elif kind == WINDOW_UPDATE:
            self.on_window_update(stream_id, payload)
        elif kind == RST_STREAM:
            self.on_reset(stream_id, payload)
        elif kind == GOAWAY:
            self.on_goaway(payload)
        elif kind == PUSH_PROMISE:
            self.fail_connection(PROTOCOL_ERROR, "push is not allowed")
        # PRIORITY and unknown frame types are ignored (RFC 9113 5.5).

    def on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if flags & PADDED:
            payload = unpad(payload)
        if flags & PRIORITY_FLAG:
            payload = payload[5:]
        if not flags & END_HEADERS:
            self.continuing_id = stream_id
            self.continued_block = bytearray(payload)
            self.continued_end_stream = bool(flags & END_STREAM)
            return
        self.header_block_done(stream_id, payload, bool(flags & END_STREAM))

    def on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not self.continuing_id:
            self.fail_connection(PROTOCOL_ERROR, "CONTINUATION without a header block")
            return
        block = self.continued_block
        block += payload
        if len(block) > self.max_header_block:
            self.fail_connection(ENHANCE_YOUR_CALM, "header block too large")
            return
        if flags & END_HEADERS:
            self.continuing_id = 0
            self.continued_block = bytearray()
            self.header_block_done(stream_id, bytes(block), self.continued_end_stream)

    def header_block_done(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        # Every block is decoded, a finished stream's too: the table is the connection's.
        try:
            fields = self.decoder.decode(block)
        except Exception as exc:  # hpack's errors: the connection cannot go on
            self.fail_connection(PROTOCOL_ERROR, f"bad header block: {exc}")
            return
        self.on_fields(stream_id, fields, end_stream)

    def on_ping(self, payload: bytes) -> None:
        """A PING (not an answer to ours): answered. The server counts them first."""
        self.write(frame(PING, ACK, 0, payload))

    def on_ping_ack(self, payload: bytes) -> None:
        """The answer to a PING of ours (the server's graceful stop sends one)."""

    # -- each end's own

    def opening(self, inbox: bytearray) -> int:
        """Check what the peer sends first, at the start of ``inbox``: how many
        bytes of it precede the frames (a client's preface), or -1 to wait for
        more bytes (or because the connection was failed)."""
        raise NotImplementedError

    def on_fields(self, stream_id: int, fields: list[tuple[str, str]], end_stream: bool) -> None:
        raise NotImplementedError

    def on_data(self, flags: int, stream_id: int, payload: bytes, size: int) -> None:
        raise NotImplementedError

    def on_settings(self, payload: bytes) -> None:
        raise NotImplementedError

    def on_window_update(self, stream_id: int, payload: bytes) -> None:
        raise NotImplementedError

    def on_reset(self, stream_id: int, payload: bytes) -> None:
        raise NotImplementedError

    def on_goaway(self, payload: bytes) -> None:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    def fail_connection(self, error: int, why: str) -> None:
        raise NotImplementedError

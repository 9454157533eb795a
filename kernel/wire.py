"""Protobuf wire format, for the few hot payloads written from bytes already at hand. Pure.

A serialised message is the concatenation of its fields (key, then for
length-delimited fields the length and the bytes), and a field appended to
a serialised message is part of that message. Hot paths that already hold a
field's bytes (a stored signal, a decision's candidates) write the event
around them instead of building and serialising a second message. Fields
must be written in field-number order for the bytes to equal what
``SerializeToString`` gives; each user tests that equality.
"""

from __future__ import annotations

from functools import cache

__all__ = ["FIXED64", "LENGTH_DELIMITED", "key", "length_delimited", "varint"]

# Wire types (https://protobuf.dev/programming-guides/encoding/#structure).
FIXED64 = 1
LENGTH_DELIMITED = 2


def varint(value: int) -> bytes:
    """``value`` (non-negative) as a base-128 varint."""
    if value < 0:
        raise ValueError("varint() encodes non-negative integers only")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@cache
def key(field_number: int, wire_type: int = LENGTH_DELIMITED) -> bytes:
    """A field's key: ``(field_number << 3) | wire_type`` as a varint."""
    return varint(field_number << 3 | wire_type)


def length_delimited(field_number: int, body: bytes) -> bytes:
    """A length-delimited field (bytes, string, sub-message) with ``body``."""
    return key(field_number) + varint(len(body)) + body

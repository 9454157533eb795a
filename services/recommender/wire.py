"""The TipDecided payload, encoded without building a message per candidate. Pure.

A decision's ``TipDecided`` lists every candidate (up to the whole catalog)
and every context feature. Building one ``CandidateScore`` message each and
serialising them cost ~1.5 us a candidate, more than scoring them; here the
repeated fields are written straight in the protobuf wire format (a field
appended to a serialised message is part of that message), the rest of the
event through protobuf. ``tests/unit/services/test_recommender_wire.py``
checks the bytes parse to the message protobuf would build.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from functools import lru_cache

from google.protobuf.message import Message

from kernel.bus import subject_of
from tips.recommender.v1 import events_pb2

# Wire tags: (field number << 3) | wire type (2: length-delimited, 1: 64-bit).
_CANDIDATES = 6 << 3 | 2  # TipDecided.candidates
_CONTEXT_FEATURES = 8 << 3 | 2  # TipDecided.context_features
_NAME = 1 << 3 | 2  # CandidateScore.catalog_tip, ContextFeature.name
_SCORE_AND_PROBABILITY = struct.Struct("<BdBd")  # CandidateScore.score = 2, .probability = 3
_VALUE = struct.Struct("<Bd")  # ContextFeature.value = 2

TIP_DECIDED_SUBJECT = subject_of(events_pb2.TipDecided)
TIP_DECIDED_TYPE = events_pb2.TipDecided.DESCRIPTOR.full_name


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, body: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(body)) + body


@lru_cache(maxsize=4096)
def _prefix(tag: int, name: str, rest: int) -> bytes:
    """Tag, length and ``name`` field of an item whose other fields take ``rest`` bytes.

    The names are the same few strings every decision: cached, so an item
    costs one ``pack`` and one concatenation.
    """
    named = _field(_NAME, name.encode())
    return bytes((tag,)) + _varint(len(named) + rest) + named


def candidates(items: Iterable[tuple[str, float, float]]) -> bytes:
    """``TipDecided.candidates`` from (catalog tip id, score, probability)."""
    pack, size = _SCORE_AND_PROBABILITY.pack, _SCORE_AND_PROBABILITY.size
    return b"".join(
        _prefix(_CANDIDATES, f"catalogTips/{arm}", size) + pack(0x11, score, 0x19, probability)
        for arm, score, probability in items
    )


def context_features(items: Iterable[tuple[str, float]]) -> bytes:
    """``TipDecided.context_features`` from (name, value)."""
    pack, size = _VALUE.pack, _VALUE.size
    return b"".join(
        _prefix(_CONTEXT_FEATURES, name, size) + pack(0x11, value) for name, value in items
    )


def tip_decided(event: Message, candidate_bytes: bytes, feature_bytes: bytes) -> bytes:
    """``event`` (a TipDecided without its repeated fields) with them appended."""
    return event.SerializeToString() + candidate_bytes + feature_bytes

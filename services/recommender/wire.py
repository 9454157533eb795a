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

from kernel.wire import FIXED64, key, length_delimited, varint

# Field keys: TipDecided.candidates = 6, .context_features = 8 (length-delimited);
# CandidateScore.catalog_tip / ContextFeature.name = 1; the doubles (64-bit).
_CANDIDATES = key(6)
_CONTEXT_FEATURES = key(8)
_SCORE_AND_PROBABILITY = struct.Struct("<BdBd")  # CandidateScore.score = 2, .probability = 3
_VALUE = struct.Struct("<Bd")  # ContextFeature.value = 2
# Keys of the double fields 2 and 3 (score, probability; a feature's value is 2).
_DOUBLE_2, _DOUBLE_3 = key(2, FIXED64)[0], key(3, FIXED64)[0]


@lru_cache(maxsize=4096)
def _prefix(field_key: bytes, name: str, rest: int) -> bytes:
    """Key, length and ``name`` field of an item whose other fields take ``rest`` bytes.

    The names are the same few strings every decision: cached, so an item
    costs one ``pack`` and one concatenation.
    """
    named = length_delimited(1, name.encode())
    return field_key + varint(len(named) + rest) + named


def candidates(items: Iterable[tuple[str, float, float]]) -> bytes:
    """``TipDecided.candidates`` from (catalog tip id, score, probability)."""
    pack, size = _SCORE_AND_PROBABILITY.pack, _SCORE_AND_PROBABILITY.size
    return b"".join(
        _prefix(_CANDIDATES, f"catalogTips/{arm}", size)
        + pack(_DOUBLE_2, score, _DOUBLE_3, probability)
        for arm, score, probability in items
    )


def context_features(items: Iterable[tuple[str, float]]) -> bytes:
    """``TipDecided.context_features`` from (name, value)."""
    pack, size = _VALUE.pack, _VALUE.size
    return b"".join(
        _prefix(_CONTEXT_FEATURES, name, size) + pack(_DOUBLE_2, value) for name, value in items
    )


def tip_decided(event: Message, candidate_bytes: bytes, feature_bytes: bytes) -> bytes:
    """``event`` (a TipDecided without its repeated fields) with them appended."""
    return event.SerializeToString() + candidate_bytes + feature_bytes

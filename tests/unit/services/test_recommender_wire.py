"""The hand-encoded TipDecided parses to the message protobuf builds."""

from __future__ import annotations

import json
import math

import numpy as np

from services.recommender import wire
from services.recommender.core.decisions import _json
from tips.recommender.v1 import context_pb2, events_pb2


def test_tip_decided_bytes_parse_to_the_built_message() -> None:
    cands = [("walk-10", 0.25, 0.5), ("x" * 200, -1.5, 0.0), ("stretch", 0.0, 1e-9)]
    feats = [("hour_local", 14.5), ("free_minutes", math.nan), ("steps_today", 0.0)]
    head = events_pb2.TipDecided(event_id="users/u/tips/t", user="users/u", propensity=0.5)
    got = events_pb2.TipDecided.FromString(
        wire.tip_decided(head, wire.candidates(cands), wire.context_features(feats))
    )
    want = events_pb2.TipDecided(
        event_id="users/u/tips/t",
        user="users/u",
        propensity=0.5,
        candidates=[
            context_pb2.CandidateScore(catalog_tip=f"catalogTips/{a}", score=s, probability=p)
            for a, s, p in cands
        ],
        context_features=[context_pb2.ContextFeature(name=n, value=v) for n, v in feats],
    )
    assert got.candidates == want.candidates
    assert [f.name for f in got.context_features] == [n for n, _ in feats]
    assert math.isnan(got.context_features[1].value)
    got.ClearField("context_features")  # NaN != NaN
    want.ClearField("context_features")
    assert got == want


def test_the_logged_rows_json_has_no_nan_for_jsonb() -> None:
    """jsonb has no NaN or infinity: unknown context values are logged as null,
    and numpy floats are written as numbers."""
    text = _json({"steps": float("nan"), "far": float("inf"), "hour": np.float64(7.5), "n": 3})
    assert json.loads(text) == {"steps": None, "far": None, "hour": 7.5, "n": 3}
    scores = {"tipA": [0.125, 0.5], "tipB": [-1e-300, 0.25]}
    assert json.loads(_json(scores)) == scores  # floats round-trip exactly

"""Turning the policy's proposals into Tips and TipDecided events; history tokens. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from kernel import paging
from kernel.errors import InvalidArgument
from services.recommender import rules
from services.recommender.domain import Features
from tips.recommender.v1 import context_pb2, events_pb2, tip_pb2

MAX_TIPS = 5
DEFAULT_HISTORY = 20
MAX_HISTORY = 100


def _ts(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def tip_count(page_size: int) -> int:
    """ListTips: default 1, at most 5 (larger values are lowered)."""
    if page_size < 0:
        raise InvalidArgument([("page_size", "must not be negative")])
    return min(page_size or 1, MAX_TIPS)


def history_size(page_size: int) -> int:
    if page_size < 0:
        raise InvalidArgument([("page_size", "must not be negative")])
    return min(page_size or DEFAULT_HISTORY, MAX_HISTORY)


def build_tip(name: str, proposal: rules.Proposal, now: datetime) -> tip_pb2.Tip:
    entry = proposal.entry
    return tip_pb2.Tip(
        name=name,
        catalog_tip=entry.name,
        title=entry.title,
        body=entry.body,
        category=entry.category,
        explanation=proposal.explanation,
        effort=entry.effort,  # type: ignore[arg-type]
        minutes_needed=entry.minutes_needed,
        state=tip_pb2.TIP_STATE_ACTIVE,
        decide_time=_ts(now),
        expire_time=_ts(proposal.expire_time),
        model_version=rules.MODEL_VERSION,
    )


def decided_event(
    user: str,
    tip: tip_pb2.Tip,
    rank: int,
    proposals: Sequence[rules.Proposal],
    features: Features,
) -> events_pb2.TipDecided:
    """The logged decision. Rules are deterministic: the chosen tip had probability 1."""
    chosen = proposals[rank]
    return events_pb2.TipDecided(
        event_id=tip.name,
        occur_time=tip.decide_time,
        user=user,
        tip=tip.name,
        catalog_tip=tip.catalog_tip,
        candidates=[
            context_pb2.CandidateScore(
                catalog_tip=p.entry.name, score=p.score, probability=1.0 if p is chosen else 0.0
            )
            for p in proposals
        ],
        propensity=1.0,
        context_features=[
            context_pb2.ContextFeature(name=n, value=v) for n, v in features.as_pairs()
        ],
        feature_schema_version=rules.FEATURE_SCHEMA_VERSION,
        model_version=rules.MODEL_VERSION,
        policy_name=rules.POLICY_NAME,
        rank=rank,
        catalog_version=rules.CATALOG_VERSION,
        expire_time=tip.expire_time,
    )


def parse_tip_name(name: str, field: str = "name") -> tuple[str, str]:
    """``(user, tip)`` of ``users/{user}/tips/{tip}``; InvalidArgument otherwise."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "users" or parts[2] != "tips" or "" in parts:
        raise InvalidArgument([(field, f"must be users/{{user}}/tips/{{tip}}, got {name!r}")])
    return parts[1], parts[3]


def _states_fingerprint(states: Sequence[int]) -> str:
    return ",".join(str(state) for state in sorted(states))


def history_token(states: Sequence[int], decide_time: datetime, tip_id: str) -> str:
    return paging.encode(paging.Cursor(decide_time, tip_id), _states_fingerprint(states))


def parse_history_token(token: str, states: Sequence[int]) -> tuple[datetime, str] | None:
    cursor = paging.decode(token, _states_fingerprint(states))
    return (cursor.time, cursor.id) if cursor else None


def reaction_signal_id(request_id: str, tip_name: str, reaction: int) -> str:
    """The forwarded signal's client_signal_id: the request id, else tip + reaction."""
    if request_id:
        if len(request_id) > 128:
            raise InvalidArgument([("request_id", "at most 128 characters")])
        return request_id
    return f"react:{tip_name.rsplit('/', 1)[-1]}:{reaction}"

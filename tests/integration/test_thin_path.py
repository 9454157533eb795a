"""The thin path over gRPC, against real PostgreSQL and NATS JetStream.

signal -> events (stored + outbox) -> TIPS_EVENTS -> recommender context ->
ListTips (a tip chosen from the signal) -> ReactToTip -> events -> stream ->
tip history. Both services run in process on free ports, as ``tips serve``
runs them. Every test uses its own user ids, so tests share one mesh.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2

from kernel.bus import Bus
from kernel.db import Database
from kernel.errors import field_violations, unpack_details
from kernel.settings import Settings
from services.recommender import domain
from services.recommender.consumers import ContextKeeper
from tests.support.recommender_rig import events_and_recommender
from tests.support.tokens import as_user
from tests.support.waiting import eventually, stream_msg_ids
from tips.events.v1 import events_service_pb2 as ev
from tips.events.v1 import events_service_pb2_grpc as ev_grpc
from tips.events.v1 import signal_pb2
from tips.profile.v1 import consent_pb2, profile_pb2
from tips.profile.v1 import events_pb2 as profile_events
from tips.recommender.v1 import recommender_service_pb2 as rec
from tips.recommender.v1 import recommender_service_pb2_grpc as rec_grpc
from tips.recommender.v1 import tip_pb2
from tipsmesh.clock import afternoon_zone

pytestmark = pytest.mark.integration

T = TypeVar("T")
SIGNAL_SUBJECT = "tips.events.v1.signal_recorded"
TIP_SUBJECT = "tips.recommender.v1.tip_decided"


@dataclass
class Mesh:
    events: ev_grpc.EventsServiceStub
    recommender: rec_grpc.RecommenderServiceStub
    db: asyncpg.Connection
    nats_url: str
    bus: Bus


@pytest.fixture(scope="module")
async def mesh(
    settings: Settings, nats_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Mesh]:
    models = tmp_path_factory.mktemp("models")
    async with (
        events_and_recommender(settings, nats_url, database_url, models) as rig,
        grpc.aio.insecure_channel(rig.events.address) as ev_channel,
        grpc.aio.insecure_channel(rig.recommender.address) as rec_channel,
    ):
        yield Mesh(
            ev_grpc.EventsServiceStub(ev_channel),
            rec_grpc.RecommenderServiceStub(rec_channel),
            rig.db,
            nats_url,
            rig.bus,
        )


# --- helpers ------------------------------------------------------------------------------


def _user() -> str:
    return f"u_{secrets.token_hex(5)}"


def _md(user: str) -> tuple[tuple[str, str], ...]:
    return as_user(user)


def _ts(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _steps(count: int, client_id: str | None = None) -> signal_pb2.Signal:
    now = datetime.now(UTC)
    return signal_pb2.Signal(
        client_signal_id=client_id or secrets.token_hex(8),
        kind=signal_pb2.SIGNAL_KIND_STEPS,
        source=signal_pb2.SIGNAL_SOURCE_PHONE,
        start_time=_ts(now - timedelta(seconds=30)),
        end_time=_ts(now),
        steps=signal_pb2.StepsPayload(count=count),
    )


def _sleep(minutes: int) -> signal_pb2.Signal:
    end = datetime.now(UTC) - timedelta(hours=1)
    return signal_pb2.Signal(
        client_signal_id=secrets.token_hex(8),
        kind=signal_pb2.SIGNAL_KIND_SLEEP,
        source=signal_pb2.SIGNAL_SOURCE_PHONE,
        start_time=_ts(end - timedelta(minutes=minutes + 20)),
        end_time=_ts(end),
        sleep=signal_pb2.SleepPayload(asleep_minutes=minutes),
    )


async def _ingest(
    mesh: Mesh, user: str, *signals: signal_pb2.Signal
) -> ev.BatchIngestSignalsResponse:
    request = ev.BatchIngestSignalsRequest(parent=f"users/{user}", signals=signals)
    response: ev.BatchIngestSignalsResponse = await mesh.events.BatchIngestSignals(
        request, metadata=_md(user), timeout=10
    )
    return response


async def _count(mesh: Mesh, sql: str, *args: Any) -> int:
    return int(await mesh.db.fetchval(sql, *args))


async def grant(mesh: Mesh, user: str, *purposes: int) -> None:
    """Publish ConsentChanged(GRANTED) as the profile service would."""
    for purpose in purposes:
        event = profile_events.ConsentChanged(
            event_id=secrets.token_hex(8),
            occur_time=_ts(datetime.now(UTC)),
            user=f"users/{user}",
            consent=f"users/{user}/consents/x",
            purpose=purpose,  # type: ignore[arg-type]
            state=consent_pb2.CONSENT_STATE_GRANTED,
            previous_state=consent_pb2.CONSENT_STATE_UNDECIDED,
            text_version="v1",
        )
        await mesh.bus.publish(event, msg_id=event.event_id)


async def in_the_afternoon(mesh: Mesh, user: str) -> None:
    """Publish ProfileChanged with a zone where it is mid-afternoon (tipsmesh/clock.py)."""
    event = profile_events.ProfileChanged(
        event_id=secrets.token_hex(8),
        occur_time=_ts(datetime.now(UTC)),
        user=f"users/{user}",
        profile=profile_pb2.Profile(name=f"users/{user}/profile", time_zone=afternoon_zone()),
        changed_fields=FieldMask(paths=["time_zone"]),
    )
    await mesh.bus.publish(event, msg_id=event.event_id)


async def _tips_until(mesh: Mesh, user: str, text: str) -> tip_pb2.Tip:
    """DecideTips (5 at a time) until the context has caught up and a tip explains ``text``.

    (ListTips would show the first decision's tips again: each probe must decide anew.)
    """

    async def probe() -> list[tip_pb2.Tip]:
        response = await mesh.recommender.DecideTips(
            rec.DecideTipsRequest(parent=f"users/{user}", page_size=5),
            metadata=_md(user),
            timeout=10,
        )
        return list(response.tips)

    tips = await eventually(probe, lambda tips: any(text in t.explanation for t in tips))
    return next(t for t in tips if text in t.explanation)


async def _get_tip(mesh: Mesh, user: str, name: str) -> tip_pb2.Tip:
    response = await mesh.recommender.GetTip(
        rec.GetTipRequest(name=name), metadata=_md(user), timeout=10
    )
    return response.tip


# --- the thin path --------------------------------------------------------------------------


async def test_signal_to_tip_to_reaction(mesh: Mesh) -> None:
    alice, bob = _user(), _user()

    # 900 steps today -> stored, published, folded into alice's context.
    response = await _ingest(mesh, alice, _steps(900))
    assert [r.outcome for r in response.results] == [ev.INGEST_OUTCOME_ACCEPTED]
    signal_name = response.results[0].signal
    assert signal_name.startswith(f"users/{alice}/signals/")
    row = await mesh.db.fetchrow(
        "SELECT kind, client_signal_id FROM events.signals WHERE user_id = $1", alice
    )
    assert row is not None and row["kind"] == signal_pb2.SIGNAL_KIND_STEPS
    await eventually(
        lambda: stream_msg_ids(mesh.nats_url, "TIPS_EVENTS", SIGNAL_SUBJECT),
        lambda ids: signal_name in ids,
    )

    await in_the_afternoon(mesh, alice)
    await grant(mesh, alice, consent_pb2.CONSENT_PURPOSE_FITNESS_DATA_FOR_TIPS)
    walk = await _tips_until(mesh, alice, "900 steps")
    assert walk.state == tip_pb2.TIP_STATE_ACTIVE
    assert walk.name.startswith(f"users/{alice}/tips/")
    await eventually(
        lambda: stream_msg_ids(mesh.nats_url, "TIPS_RECOMMENDER", TIP_SUBJECT),
        lambda ids: walk.name in ids,
    )

    # Another user, another signal: another tip.
    await in_the_afternoon(mesh, bob)
    await grant(mesh, bob, consent_pb2.CONSENT_PURPOSE_SLEEP_DATA_FOR_TIPS)
    await _ingest(mesh, bob, _sleep(300))
    wind_down = await _tips_until(mesh, bob, "5 h 00 min")
    assert wind_down.category in ("sleep", "recovery")

    # Alice did the walk: the reaction goes through events and lands in her history.
    request_id = secrets.token_hex(8)
    react = rec.ReactToTipRequest(
        name=walk.name, reaction=signal_pb2.TIP_REACTION_DONE, request_id=request_id
    )
    reacted = (await mesh.recommender.ReactToTip(react, metadata=_md(alice), timeout=10)).tip
    assert reacted.state == tip_pb2.TIP_STATE_DONE
    assert reacted.reaction == signal_pb2.TIP_REACTION_DONE
    assert reacted.HasField("react_time")
    reaction_sql = (
        "SELECT count(*) FROM events.signals WHERE user_id = $1 AND kind = $2 "
        "AND client_signal_id = $3"
    )
    reaction_kind = signal_pb2.SIGNAL_KIND_TIP_REACTION
    assert await _count(mesh, reaction_sql, alice, reaction_kind, request_id) == 1

    # The consumer folds the reaction in: the walk is not offered again for now.
    await eventually(
        lambda: mesh.db.fetchval(
            "SELECT context FROM recommender.user_context WHERE user_id = $1", alice
        ),
        lambda ctx: ctx is not None and walk.catalog_tip.split("/")[1] in str(ctx),
    )
    history = await mesh.recommender.ListTipHistory(
        rec.ListTipHistoryRequest(parent=f"users/{alice}"), metadata=_md(alice), timeout=10
    )
    by_name = {t.name: t for t in history.tips}
    assert by_name[walk.name].state == tip_pb2.TIP_STATE_DONE

    # A retry with the same request id records nothing new.
    again = (await mesh.recommender.ReactToTip(react, metadata=_md(alice), timeout=10)).tip
    assert again.state == tip_pb2.TIP_STATE_DONE
    assert again.react_time == reacted.react_time
    assert await _count(mesh, reaction_sql, alice, reaction_kind, request_id) == 1


async def test_reaction_posted_to_events_lands_in_history(mesh: Mesh) -> None:
    bob = _user()
    await in_the_afternoon(mesh, bob)
    await grant(mesh, bob, consent_pb2.CONSENT_PURPOSE_SLEEP_DATA_FOR_TIPS)
    await _ingest(mesh, bob, _sleep(280))
    tip = await _tips_until(mesh, bob, "4 h 40 min")
    reaction = signal_pb2.Signal(
        client_signal_id=secrets.token_hex(8),
        kind=signal_pb2.SIGNAL_KIND_TIP_REACTION,
        source=signal_pb2.SIGNAL_SOURCE_APP,
        start_time=_ts(datetime.now(UTC)),
        tip_reaction=signal_pb2.TipReactionPayload(
            tip=tip.name, reaction=signal_pb2.TIP_REACTION_DISMISS
        ),
    )
    response = await _ingest(mesh, bob, reaction)
    assert response.accepted_count == 1
    landed = await eventually(
        lambda: _get_tip(mesh, bob, tip.name),
        lambda t: t.state == tip_pb2.TIP_STATE_DISMISSED,
    )
    assert landed.reaction == signal_pb2.TIP_REACTION_DISMISS


# --- ingest rules -------------------------------------------------------------------------


def _bad_request_fields(status: Any) -> list[str]:
    return [
        v.field
        for d in unpack_details(status)
        if isinstance(d, error_details_pb2.BadRequest)
        for v in d.field_violations
    ]


async def test_batch_judges_items_one_by_one(mesh: Mesh) -> None:
    user = _user()
    mood = signal_pb2.Signal(
        client_signal_id="mood-1",
        kind=signal_pb2.SIGNAL_KIND_MOOD,
        source=signal_pb2.SIGNAL_SOURCE_APP,
        start_time=_ts(datetime.now(UTC)),
        mood=signal_pb2.MoodPayload(score=9),
    )
    mismatched = _steps(10)
    mismatched.kind = signal_pb2.SIGNAL_KIND_SLEEP
    response = await _ingest(mesh, user, _steps(1200), _steps(-5), mood, mismatched, _steps(3))
    outcomes = [r.outcome for r in response.results]
    assert outcomes == [
        ev.INGEST_OUTCOME_ACCEPTED,
        ev.INGEST_OUTCOME_REJECTED,
        ev.INGEST_OUTCOME_REJECTED,
        ev.INGEST_OUTCOME_REJECTED,
        ev.INGEST_OUTCOME_ACCEPTED,
    ]
    assert [r.index for r in response.results] == [0, 1, 2, 3, 4]
    assert (response.accepted_count, response.rejected_count) == (2, 3)
    assert response.results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert _bad_request_fields(response.results[1].error) == ["steps.count"]
    assert _bad_request_fields(response.results[2].error) == ["mood.score"]
    assert _bad_request_fields(response.results[3].error) == ["sleep"]
    assert not response.results[1].signal
    assert await _count(mesh, "SELECT count(*) FROM events.signals WHERE user_id = $1", user) == 2

    listed = await mesh.events.ListSignals(
        ev.ListSignalsRequest(parent=f"users/{user}", page_size=1), metadata=_md(user)
    )
    assert len(listed.signals) == 1 and listed.next_page_token
    rest = await mesh.events.ListSignals(
        ev.ListSignalsRequest(
            parent=f"users/{user}", page_size=1, page_token=listed.next_page_token
        ),
        metadata=_md(user),
    )
    assert len(rest.signals) == 1 and not rest.next_page_token
    names = {listed.signals[0].name, rest.signals[0].name}
    assert names == {response.results[0].signal, response.results[4].signal}
    got = await mesh.events.GetSignal(
        ev.GetSignalRequest(name=response.results[0].signal), metadata=_md(user)
    )
    assert got.signal.steps.count == 1200 and got.signal.HasField("ingest_time")


async def test_batch_size_limits_name_signals(mesh: Mesh) -> None:
    user = _user()
    for count in (0, 501):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await _ingest(mesh, user, *[_steps(1) for _ in range(count)])
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "signals" in field_violations(failed.value)
    assert await _count(mesh, "SELECT count(*) FROM events.signals WHERE user_id = $1", user) == 0


async def test_duplicate_is_stored_and_published_once(mesh: Mesh) -> None:
    user = _user()
    first = await _ingest(mesh, user, _steps(500, client_id="dup-1"))
    second = await _ingest(mesh, user, _steps(700, client_id="dup-1"))
    assert first.results[0].outcome == ev.INGEST_OUTCOME_ACCEPTED
    assert second.results[0].outcome == ev.INGEST_OUTCOME_DUPLICATE
    assert second.duplicate_count == 1
    name = first.results[0].signal
    assert second.results[0].signal == name
    assert await _count(mesh, "SELECT count(*) FROM events.signals WHERE user_id = $1", user) == 1
    assert await _count(mesh, "SELECT count(*) FROM events.outbox WHERE msg_id = $1", name) == 1
    await eventually(
        lambda: _count(mesh, "SELECT count(*) FROM events.outbox WHERE published_at IS NULL"),
        lambda pending: pending == 0,
    )
    ids = await stream_msg_ids(mesh.nats_url, "TIPS_EVENTS", SIGNAL_SUBJECT)
    assert ids.count(name) == 1
    assert not any(i.startswith(f"users/{user}/") and i != name for i in ids)


# --- ownership ------------------------------------------------------------------------------


async def test_posting_to_another_users_parent_is_denied(mesh: Mesh) -> None:
    alice, bob = _user(), _user()
    request = ev.BatchIngestSignalsRequest(parent=f"users/{bob}", signals=[_steps(100)])
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await mesh.events.BatchIngestSignals(request, metadata=_md(alice), timeout=10)
    assert failed.value.code() == grpc.StatusCode.PERMISSION_DENIED
    sql = "SELECT count(*) FROM events.signals WHERE user_id = ANY($1::text[])"
    assert await _count(mesh, sql, [alice, bob]) == 0


async def test_reacting_to_another_users_tip_changes_nothing(mesh: Mesh) -> None:
    alice, mallory = _user(), _user()
    tip = (
        await mesh.recommender.ListTips(
            rec.ListTipsRequest(parent=f"users/{alice}"), metadata=_md(alice), timeout=10
        )
    ).tips[0]
    react = rec.ReactToTipRequest(name=tip.name, reaction=signal_pb2.TIP_REACTION_DISMISS)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await mesh.recommender.ReactToTip(react, metadata=_md(mallory), timeout=10)
    assert failed.value.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND)
    after = await _get_tip(mesh, alice, tip.name)
    assert after.state == tip_pb2.TIP_STATE_ACTIVE
    sql = "SELECT count(*) FROM events.signals WHERE user_id = ANY($1::text[])"
    assert await _count(mesh, sql, [alice, mallory]) == 0

    # Her own missing tip is NOT_FOUND; a bad reaction names the field.
    missing = rec.ReactToTipRequest(
        name=f"users/{alice}/tips/nope", reaction=signal_pb2.TIP_REACTION_DONE
    )
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await mesh.recommender.ReactToTip(missing, metadata=_md(alice), timeout=10)
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    bad = rec.ReactToTipRequest(name=tip.name)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await mesh.recommender.ReactToTip(bad, metadata=_md(alice), timeout=10)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "reaction" in field_violations(failed.value)
    assert await _count(mesh, sql, [alice, mallory]) == 0


async def test_contexts_are_rebuilt_from_the_database(mesh: Mesh, settings: Settings) -> None:
    """A restarted recommender starts from the persisted contexts, not from empty."""
    user = _user()
    await _ingest(mesh, user, _steps(700))
    await eventually(
        lambda: mesh.db.fetchval(
            "SELECT context FROM recommender.user_context WHERE user_id = $1", user
        ),
        lambda ctx: ctx is not None,
    )
    db = await Database.connect(settings, "recommender")
    try:
        fresh = ContextKeeper(db)
        assert await fresh.load() >= 1
        assert domain.features(fresh.get(user), datetime.now(UTC)).steps_today == 700
    finally:
        await db.close()

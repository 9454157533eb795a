"""The recommender's hot path against real PostgreSQL and NATS: catalog, eligibility,
decisions logged with propensity and model version, rewards, online learning, exports.

Events and the recommender run in process (as in test_thin_path.py); the test
plays the profile service on TIPS_PROFILE (ProfileChanged / ConsentChanged).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from google.type import dayofweek_pb2, timeofday_pb2

from kernel.bus import Bus
from kernel.errors import field_violations
from kernel.settings import Settings
from tests.support.recommender_rig import events_and_recommender
from tests.support.tokens import as_user
from tests.support.waiting import eventually as _eventually
from tips.events.v1 import events_service_pb2 as ev
from tips.events.v1 import events_service_pb2_grpc as ev_grpc
from tips.events.v1 import signal_pb2
from tips.profile.v1 import consent_pb2, profile_pb2
from tips.profile.v1 import events_pb2 as profile_events
from tips.recommender.v1 import recommender_service_pb2 as rec
from tips.recommender.v1 import recommender_service_pb2_grpc as rec_grpc
from tips.recommender.v1 import tip_catalog_service_pb2 as cat
from tips.recommender.v1 import tip_catalog_service_pb2_grpc as cat_grpc
from tips.recommender.v1 import tip_pb2

pytestmark = pytest.mark.integration

P = consent_pb2.ConsentPurpose
ALL_DATA = (
    P.CONSENT_PURPOSE_CALENDAR_DATA_FOR_TIPS,
    P.CONSENT_PURPOSE_FITNESS_DATA_FOR_TIPS,
    P.CONSENT_PURPOSE_SLEEP_DATA_FOR_TIPS,
    P.CONSENT_PURPOSE_MOOD_DATA_FOR_TIPS,
)
REWARD_WAIT = 2.0


@dataclass
class Mesh:
    events: ev_grpc.EventsServiceStub
    tips: rec_grpc.RecommenderServiceStub
    internal: rec_grpc.RecommenderInternalServiceStub
    catalog: cat_grpc.TipCatalogServiceStub
    db: asyncpg.Connection
    bus: Bus


@pytest.fixture(scope="module")
async def mesh(
    settings: Settings, nats_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Mesh]:
    models = tmp_path_factory.mktemp("models")
    async with (
        events_and_recommender(
            settings,
            nats_url,
            database_url,
            models,
            recommender_reward_wait_seconds=REWARD_WAIT,
            recommender_reward_sweep_seconds=0.3,
            recommender_seed=7,
        ) as rig,
        grpc.aio.insecure_channel(rig.events.address) as ev_channel,
        grpc.aio.insecure_channel(rig.recommender.address) as rec_channel,
    ):
        yield Mesh(
            ev_grpc.EventsServiceStub(ev_channel),
            rec_grpc.RecommenderServiceStub(rec_channel),
            rec_grpc.RecommenderInternalServiceStub(rec_channel),
            cat_grpc.TipCatalogServiceStub(rec_channel),
            rig.db,
            rig.bus,
        )


# --- helpers --------------------------------------------------------------------------------


def _user() -> str:
    return f"u_{secrets.token_hex(5)}"


def _md(user: str, *scopes: str) -> tuple[tuple[str, str], ...]:
    return as_user(user, *scopes)


ADMIN = _md("ops", "admin")


def _ts(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


async def _grant(mesh: Mesh, user: str, *purposes: int) -> None:
    for purpose in purposes:
        event = profile_events.ConsentChanged(
            event_id=secrets.token_hex(8), occur_time=_ts(datetime.now(UTC)), user=f"users/{user}",
            consent=f"users/{user}/consents/x", purpose=purpose,  # type: ignore[arg-type]
            state=consent_pb2.CONSENT_STATE_GRANTED,
            previous_state=consent_pb2.CONSENT_STATE_UNDECIDED, text_version="v1",
        )  # fmt: skip
        await mesh.bus.publish(event, msg_id=event.event_id)


async def _profile(mesh: Mesh, user: str, **fields: Any) -> None:
    event = profile_events.ProfileChanged(
        event_id=secrets.token_hex(8),
        occur_time=_ts(datetime.now(UTC)),
        user=f"users/{user}",
        profile=profile_pb2.Profile(name=f"users/{user}/profile", **fields),
    )
    await mesh.bus.publish(event, msg_id=event.event_id)


async def _list(mesh: Mesh, user: str, n: int = 5) -> list[tip_pb2.Tip]:
    response = await mesh.tips.ListTips(
        rec.ListTipsRequest(parent=f"users/{user}", page_size=n), metadata=_md(user), timeout=10
    )
    return list(response.tips)


async def _decide(mesh: Mesh, user: str, n: int = 5) -> list[tip_pb2.Tip]:
    response = await mesh.tips.DecideTips(
        rec.DecideTipsRequest(parent=f"users/{user}", page_size=n), metadata=_md(user), timeout=10
    )
    return list(response.tips)


async def _react(mesh: Mesh, user: str, tip: tip_pb2.Tip, reaction: int) -> None:
    await mesh.tips.ReactToTip(
        rec.ReactToTipRequest(name=tip.name, reaction=reaction),  # type: ignore[arg-type]
        metadata=_md(user),
        timeout=10,
    )


async def _decided(mesh: Mesh, user: str) -> tuple[int, int]:
    """(decision rows, TipDecided events in the outbox) of the user."""
    rows = await mesh.db.fetchval("SELECT count(*) FROM recommender.tips WHERE user_id = $1", user)
    events = await mesh.db.fetchval(
        "SELECT count(*) FROM recommender.outbox WHERE msg_id LIKE $1 AND msg_id NOT LIKE $2",
        f"users/{user}/tips/%",
        "%:reward",
    )
    return int(rows), int(events)


def _steps(count: int) -> signal_pb2.Signal:
    now = datetime.now(UTC)
    return signal_pb2.Signal(
        client_signal_id=secrets.token_hex(8), kind=signal_pb2.SIGNAL_KIND_STEPS,
        source=signal_pb2.SIGNAL_SOURCE_PHONE, start_time=_ts(now - timedelta(seconds=5)),
        end_time=_ts(now), steps=signal_pb2.StepsPayload(count=count),
    )  # fmt: skip


async def _ingest(mesh: Mesh, user: str, *signals: signal_pb2.Signal) -> None:
    await mesh.events.BatchIngestSignals(
        ev.BatchIngestSignalsRequest(parent=f"users/{user}", signals=signals),
        metadata=_md(user),
        timeout=10,
    )


# --- catalog --------------------------------------------------------------------------------


async def test_catalog_is_loaded_and_needs_the_admin_scope(mesh: Mesh) -> None:
    names: list[str] = []
    token = ""
    while True:
        page = await mesh.catalog.ListCatalogTips(
            cat.ListCatalogTipsRequest(page_size=25, page_token=token), metadata=ADMIN
        )
        names += [t.name for t in page.catalog_tips]
        token = page.next_page_token
        if not token:
            break
    assert len(names) >= 60 and len(set(names)) == len(names)
    assert page.catalog_version.startswith("v1")
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await mesh.catalog.ListCatalogTips(cat.ListCatalogTipsRequest(), metadata=_md("someone"))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    status = await mesh.internal.GetPolicyStatus(rec.GetPolicyStatusRequest())
    assert status.enabled_catalog_tip_count == len(names)


async def test_admin_edits_with_etags_and_masks(mesh: Mesh) -> None:
    got = (
        await mesh.catalog.GetCatalogTip(
            cat.GetCatalogTipRequest(name="catalogTips/drink_water"), metadata=ADMIN
        )
    ).catalog_tip
    tip = cat.CreateCatalogTipRequest(catalog_tip=got, catalog_tip_id=f"t_{secrets.token_hex(3)}")
    tip.catalog_tip.body_template = "Drink {unknown_thing}"
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await mesh.catalog.CreateCatalogTip(tip, metadata=ADMIN)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    tip.catalog_tip.body_template = "Drink water, it is {local_time}."
    created = (await mesh.catalog.CreateCatalogTip(tip, metadata=ADMIN)).catalog_tip
    assert created.catalog_version.startswith("v1+") and created.etag
    patch = cat.UpdateCatalogTipRequest(
        catalog_tip=created, update_mask=FieldMask(paths=["title", "eligibility.max_per_day"])
    )
    patch.catalog_tip.title = "Water!"
    patch.catalog_tip.eligibility.max_per_day = 2
    updated = (await mesh.catalog.UpdateCatalogTip(patch, metadata=ADMIN)).catalog_tip
    assert updated.title == "Water!" and updated.eligibility.max_per_day == 2
    assert updated.etag != created.etag
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await mesh.catalog.UpdateCatalogTip(patch, metadata=ADMIN)  # old etag
    assert stale.value.code() == grpc.StatusCode.ABORTED
    await mesh.catalog.DeleteCatalogTip(
        cat.DeleteCatalogTipRequest(name=created.name, etag=updated.etag), metadata=ADMIN
    )
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await mesh.catalog.GetCatalogTip(
            cat.GetCatalogTipRequest(name=created.name), metadata=ADMIN
        )
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


# --- decisions --------------------------------------------------------------------------------


async def test_decisions_are_logged_with_propensity_and_model_version(mesh: Mesh) -> None:
    user = _user()
    tips = await _list(mesh, user, 3)
    assert len(tips) == 3 and len({t.catalog_tip for t in tips}) == 3
    assert all(t.explanation and t.model_version.startswith("models/tip_scorer/") for t in tips)
    rows = await mesh.db.fetch(
        "SELECT propensity, model_version, row, candidates, context, rank "
        "FROM recommender.tips WHERE user_id = $1 ORDER BY rank",
        user,
    )
    assert [r["rank"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert 0 < r["propensity"] <= 1 and r["row"] is not None and r["candidates"]
        assert r["model_version"] == tips[0].model_version
    # No consent granted: no tip that needs one.
    assert not any(t.category == "sleep" and "slept" in t.explanation for t in tips)


async def test_eligibility_rules_hold_through_the_service(mesh: Mesh) -> None:
    user = _user()
    # Muted categories and a cap of 4 distinct tips a day (the profile's events); and a
    # second user in quiet hours around now.
    await _profile(mesh, user, muted_categories=["hydration", "nutrition"], daily_tip_cap=4)
    quiet = _user()
    now = datetime.now(UTC)
    window = profile_pb2.QuietHoursWindow(
        day_of_week=dayofweek_pb2.DayOfWeek.Value(now.strftime("%A").upper()),
        start_time_of_day=timeofday_pb2.TimeOfDay(hours=0),
        end_time_of_day=timeofday_pb2.TimeOfDay(hours=23, minutes=59),
    )
    await _profile(mesh, quiet, time_zone="UTC", quiet_hours=[window])
    # Quiet hours: no tip at all. Profiles are applied in order, so once this holds
    # the first user's profile has landed too.
    await _eventually(lambda: _decide(mesh, quiet), lambda tips: tips == [])

    seen: list[tip_pb2.Tip] = []
    for _ in range(3):
        seen += await _decide(mesh, user, 2)
    assert 0 < len(seen) <= 4
    assert not {t.category for t in seen} & {"hydration", "nutrition"}
    assert len({t.catalog_tip for t in seen}) == len(seen)  # cooldowns: never twice
    assert await _decide(mesh, user) == []  # the daily cap is reached


async def test_snooze_and_done_keep_a_tip_away(mesh: Mesh) -> None:
    user = _user()
    first = (await _list(mesh, user, 1))[0]
    await _react(mesh, user, first, signal_pb2.TIP_REACTION_SNOOZE)
    assert first.name not in {t.name for t in await _list(mesh, user)}
    for _ in range(4):
        assert first.catalog_tip not in {t.catalog_tip for t in await _decide(mesh, user)}


async def test_a_snooze_time_out_of_its_types_range_is_the_callers_error(mesh: Mesh) -> None:
    """A Timestamp past year 9999 or an absurd Duration names the field (both
    surfaced as INTERNAL before)."""
    user = _user()
    tip = (await _list(mesh, user, 1))[0]
    bad_values: list[tuple[str, Timestamp | Duration]] = [
        ("snooze_until", Timestamp(seconds=10**12)),
        ("snooze_until", Timestamp(seconds=0, nanos=-5)),
        ("snooze_duration", Duration(seconds=10**15)),
        ("snooze_duration", Duration(seconds=1, nanos=-5)),
    ]
    for field, value in bad_values:
        request = rec.ReactToTipRequest(name=tip.name, reaction=signal_pb2.TIP_REACTION_SNOOZE)
        getattr(request, field).CopyFrom(value)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await mesh.tips.ReactToTip(request, metadata=_md(user), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert list(field_violations(caught.value)) == [field]
    state = await mesh.db.fetchval("SELECT state FROM recommender.tips WHERE user_id = $1", user)
    assert state == tip_pb2.TIP_STATE_ACTIVE  # nothing landed


async def test_done_reaction_reaches_the_policy_before_react_to_tip_answers(mesh: Mesh) -> None:
    async def status() -> rec.GetPolicyStatusResponse:
        return await mesh.internal.GetPolicyStatus(rec.GetPolicyStatusRequest())

    a, b = _user(), _user()
    tip = (await _list(mesh, a, 1))[0]
    arm = tip.catalog_tip.split("/")[1]
    before_updates = (await status()).online_update_count
    score_sql = (
        "SELECT (candidates->$2->>0)::float FROM recommender.tips "
        "WHERE user_id = $1 AND candidates ? $2 ORDER BY decide_time DESC LIMIT 1"
    )
    await _list(mesh, b, 1)
    before = await mesh.db.fetchval(score_sql, b, arm)
    await mesh.tips.ReactToTip(
        rec.ReactToTipRequest(name=tip.name, reaction=signal_pb2.TIP_REACTION_DONE),
        metadata=_md(a),
    )
    # ReactToTip lands its reaction itself (core.reactions): no waiting for the consumer.
    assert (await status()).online_update_count > before_updates
    c = _user()
    await _list(mesh, c, 1)
    after = await mesh.db.fetchval(score_sql, c, arm)
    # The model (the shared part) is not exported again after one reward, so the rise is
    # the tip's own mean: its share of the reward in the joint fit (policy.bandit).
    assert before is not None and after is not None and after > before + 0.01
    reward = await mesh.db.fetchrow(
        "SELECT reward, reward_source FROM recommender.tips WHERE user_id = $1", a
    )
    assert reward["reward"] == 1.0 and reward["reward_source"] == 1
    msg = f"{tip.name}:reward"
    assert await mesh.db.fetchval("SELECT count(*) FROM recommender.outbox WHERE msg_id = $1", msg)


async def test_default_reward_after_the_wait(mesh: Mesh) -> None:
    user = _user()
    tip = (await _list(mesh, user, 1))[0]
    row = await _eventually(
        lambda: mesh.db.fetchrow(
            "SELECT reward, reward_source, state FROM recommender.tips WHERE user_id = $1", user
        ),
        lambda r: r["reward"] is not None,
        within=REWARD_WAIT + 5,
    )
    assert row["reward"] == 0.0 and row["reward_source"] == 2
    assert row["state"] == tip_pb2.TIP_STATE_EXPIRED
    assert await mesh.db.fetchval(
        "SELECT count(*) FROM recommender.outbox WHERE msg_id = $1", f"{tip.name}:reward"
    )


async def test_export_swaps_the_model_under_load(mesh: Mesh) -> None:
    start = await mesh.internal.GetPolicyStatus(rec.GetPolicyStatusRequest())
    users = [_user() for _ in range(60)]

    async def decide(user: str) -> int:
        return len(await _list(mesh, user, 1))

    async def export(i: int) -> rec.ExportPolicyModelResponse:
        await asyncio.sleep(0.01 * i)
        return await mesh.internal.ExportPolicyModel(
            rec.ExportPolicyModelRequest(request_id=f"exp-{secrets.token_hex(4)}")
        )

    results = await asyncio.gather(*(decide(u) for u in users), *(export(i) for i in range(3)))
    assert all(r == 1 for r in results[:60])
    exports = results[60:]
    end = await mesh.internal.GetPolicyStatus(rec.GetPolicyStatusRequest())
    assert end.model_version != start.model_version
    assert end.model_version == max(
        (e.model_version for e in exports), key=lambda v: int(v.rsplit("/", 1)[1])
    )
    again = await mesh.internal.ExportPolicyModel(
        rec.ExportPolicyModelRequest(request_id="same-id")
    )
    repeat = await mesh.internal.ExportPolicyModel(
        rec.ExportPolicyModelRequest(request_id="same-id")
    )
    assert again.model_version == repeat.model_version


async def test_decision_context_reflects_signals(mesh: Mesh) -> None:
    user = _user()
    await _grant(mesh, user, *ALL_DATA)
    await _ingest(mesh, user, _steps(1234))

    async def probe() -> dict[str, float]:
        got = await mesh.internal.GetDecisionContext(
            rec.GetDecisionContextRequest(name=f"users/{user}/decisionContext")
        )
        return {f.name: f.value for f in got.decision_context.features}

    values = await _eventually(probe, lambda v: v.get("steps_today") == 1234)
    assert values["signal_count"] == 1


# --- seeing a tip again is not a decision -----------------------------------------------------


async def test_list_tips_shows_the_active_tips_again_and_decides_nothing(mesh: Mesh) -> None:
    user = _user()
    first = await _list(mesh, user, 3)
    assert len(first) == 3
    for _ in range(5):  # a screen refreshed five times
        again = await _list(mesh, user, 3)
        assert [t.name for t in again] == [t.name for t in first]
        assert [t.explanation for t in again] == [t.explanation for t in first]
    assert await _decided(mesh, user) == (3, 3)
    assert [t.name for t in await _list(mesh, user, 1)] == [first[0].name]  # best first

    # A reacted tip leaves the list; the rest stay, still no decision.
    await _react(mesh, user, first[0], signal_pb2.TIP_REACTION_DONE)
    assert [t.name for t in await _list(mesh, user, 3)] == [t.name for t in first[1:]]
    await _react(mesh, user, first[1], signal_pb2.TIP_REACTION_DISMISS)
    await _react(mesh, user, first[2], signal_pb2.TIP_REACTION_SNOOZE)
    assert await _decided(mesh, user) == (3, 3)
    # None active: the next look decides anew, once.
    fresh = await _list(mesh, user, 2)
    assert fresh and not {t.name for t in fresh} & {t.name for t in first}
    assert [t.name for t in await _list(mesh, user, 2)] == [t.name for t in fresh]
    assert await _decided(mesh, user) == (3 + len(fresh), 3 + len(fresh))
    # Only the reactions were rewarded: seeing a tip again is no reaction.
    rewards = await mesh.db.fetch(
        "SELECT tip_id, reward FROM recommender.tips WHERE user_id = $1 AND reward IS NOT NULL",
        user,
    )
    assert sorted(r["reward"] for r in rewards) == [0.0, 0.25, 1.0]


async def test_decide_tips_decides_anew_and_the_older_tips_stay_active(mesh: Mesh) -> None:
    user = _user()
    older = await _list(mesh, user, 1)
    newer = await _decide(mesh, user, 1)
    assert older and newer and newer[0].name != older[0].name
    # Newest decision first.
    assert [t.name for t in await _list(mesh, user, 5)] == [newer[0].name, older[0].name]
    assert await _decided(mesh, user) == (2, 2)


async def test_looks_at_the_same_moment_share_one_decision(mesh: Mesh) -> None:
    user = _user()
    answers = await asyncio.gather(*(_list(mesh, user, 1) for _ in range(12)))
    assert len({a[0].name for a in answers}) == 1
    assert await _decided(mesh, user) == (1, 1)


async def test_active_tips_outlive_a_restart(
    mesh: Mesh, settings: Settings, database_url: str, tmp_path: Any
) -> None:
    """A second recommender on the same database (as after a restart) shows the same tips."""
    from kernel.server import ServiceServer
    from services.recommender.service import definition
    from services.recommender.settings import RecommenderSettings

    user = _user()
    shown = await _list(mesh, user, 2)
    rec_settings = RecommenderSettings(
        **{**settings.model_dump(), "log_format": "text"},
        recommender_model_repository=str(tmp_path),
    )
    server = ServiceServer(definition(f"rec-restart{secrets.token_hex(3)}"), rec_settings, port=0)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = rec_grpc.RecommenderServiceStub(channel)
            answer = await stub.ListTips(
                rec.ListTipsRequest(parent=f"users/{user}", page_size=2),
                metadata=_md(user),
                timeout=10,
            )
    finally:
        await server.stop(grace=0)
    assert [t.name for t in answer.tips] == [t.name for t in shown]
    assert await _decided(mesh, user) == (2, 2)

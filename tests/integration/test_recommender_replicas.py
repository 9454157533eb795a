"""Two recommender replicas on one database and one NATS learn from every reward.

Replica A runs with the events service (tests/support/recommender_rig.py);
replica B is a second recommender process's worth of the same service. A
reward landed on A reaches B's policy through ``RewardAssigned`` (and B's
reconcile pass would find it in the table otherwise), and is folded in once.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.type import dayofweek_pb2, timeofday_pb2

from gateway.app import create_app
from gateway.auth import edge_auth_from_settings
from gateway.upstreams import Upstreams
from kernel.server import ServiceServer
from kernel.settings import Settings
from kernel.timestamps import timestamp
from services.recommender.service import definition
from services.recommender.settings import RecommenderSettings
from tests.support.recommender_rig import Rig, events_and_recommender
from tests.support.tokens import as_user
from tests.support.waiting import eventually
from tips.events.v1 import events_service_pb2 as ev
from tips.events.v1 import events_service_pb2_grpc as ev_grpc
from tips.events.v1 import signal_pb2
from tips.profile.v1 import events_pb2 as profile_events
from tips.profile.v1 import profile_pb2
from tips.recommender.v1 import recommender_service_pb2 as rec
from tips.recommender.v1 import recommender_service_pb2_grpc as rec_grpc

pytestmark = pytest.mark.integration

# No timeout rewards during the test: every reward here is a reaction.
QUIET = {"recommender_reward_wait_seconds": 3600.0, "recommender_reward_reconcile_seconds": 0.2}


@pytest.fixture
async def replicas(
    settings: Settings,
    nats_url: str,
    create_database: Callable[[], Awaitable[str]],
    tmp_path: Path,
) -> AsyncIterator[tuple[Rig, ServiceServer]]:
    # A database of their own: these replicas' rewards must not reach other tests' policy.
    database_url = await create_database()
    settings = settings.model_copy(update={"database_url": database_url})
    async with events_and_recommender(
        settings, nats_url, database_url, tmp_path / "a", **QUIET
    ) as rig:
        b_settings = RecommenderSettings(
            **{
                **settings.model_dump(),
                **QUIET,
                "log_format": "text",
                "events_addr": rig.events.address,
                "recommender_model_repository": str(tmp_path / "b"),
            }
        )
        # One durable for both, as replicas of one deployment: a signal is landed once.
        b = ServiceServer(definition(rig.durable), b_settings, port=0)
        await b.start()
        try:
            yield rig, b
        finally:
            await b.stop(grace=0)


@pytest.fixture
async def channels(
    replicas: tuple[Rig, ServiceServer],
) -> AsyncIterator[tuple[grpc.aio.Channel, grpc.aio.Channel]]:
    """Channels to replica A and replica B."""
    rig, b = replicas
    async with (
        grpc.aio.insecure_channel(rig.recommender.address) as a_channel,
        grpc.aio.insecure_channel(b.address) as b_channel,
    ):
        yield a_channel, b_channel


async def _updates(channel: grpc.aio.Channel) -> int:
    status = await rec_grpc.RecommenderInternalServiceStub(channel).GetPolicyStatus(
        rec.GetPolicyStatusRequest(), timeout=10
    )
    return int(status.online_update_count)


async def test_a_reward_on_one_replica_is_learned_once_by_the_other(
    channels: tuple[grpc.aio.Channel, grpc.aio.Channel],
) -> None:
    user = f"u_{secrets.token_hex(5)}"
    md: Any = as_user(user)
    a_channel, b_channel = channels
    a = rec_grpc.RecommenderServiceStub(a_channel)
    a_before, b_before = await _updates(a_channel), await _updates(b_channel)
    decided = await a.DecideTips(
        rec.DecideTipsRequest(parent=f"users/{user}", page_size=2), metadata=md, timeout=10
    )
    assert len(decided.tips) == 2
    for tip, reaction in zip(
        decided.tips,
        (signal_pb2.TIP_REACTION_DONE, signal_pb2.TIP_REACTION_DISMISS),
        strict=True,
    ):
        await a.ReactToTip(
            rec.ReactToTipRequest(name=tip.name, reaction=reaction),  # type: ignore[arg-type]
            metadata=md,
            timeout=10,
        )
    # The replica that landed a reaction folded it at commit (A, unless B's share
    # of the signals got there first); the other folds it from the feed.
    for channel, before in ((a_channel, a_before), (b_channel, b_before)):
        await eventually(
            lambda channel=channel: _updates(channel), lambda n, b=before: n >= b + 2, within=30
        )
    # Once each: the feed, the reconcile passes (every 0.2 s) and A's own copy of
    # the events fold nothing twice.
    await asyncio.sleep(1.0)
    assert await _updates(b_channel) == b_before + 2
    assert await _updates(a_channel) == a_before + 2


async def test_a_profile_update_reaches_every_replica(
    replicas: tuple[Rig, ServiceServer], channels: tuple[grpc.aio.Channel, grpc.aio.Channel]
) -> None:
    """Each replica's profile cache reads TIPS_PROFILE whole: quiet hours around now
    leave both without a tip (a shared durable would give each only its share)."""
    rig, _ = replicas
    users = [f"u_{secrets.token_hex(5)}" for _ in range(6)]
    now = datetime.now(UTC)
    window = profile_pb2.QuietHoursWindow(
        day_of_week=dayofweek_pb2.DayOfWeek.Value(now.strftime("%A").upper()),
        start_time_of_day=timeofday_pb2.TimeOfDay(hours=0),
        end_time_of_day=timeofday_pb2.TimeOfDay(hours=23, minutes=59),
    )
    for user in users:
        event = profile_events.ProfileChanged(
            event_id=secrets.token_hex(8),
            occur_time=timestamp(now),
            user=f"users/{user}",
            profile=profile_pb2.Profile(
                name=f"users/{user}/profile", time_zone="UTC", quiet_hours=[window]
            ),
        )
        await rig.bus.publish(event, msg_id=event.event_id)
    a_channel, b_channel = channels
    for channel in (a_channel, b_channel):
        stub = rec_grpc.RecommenderServiceStub(channel)
        for user in users:

            async def decide(stub: Any = stub, user: str = user) -> int:
                answer = await stub.DecideTips(
                    rec.DecideTipsRequest(parent=f"users/{user}", page_size=1),
                    metadata=as_user(user),
                    timeout=10,
                )
                return len(answer.tips)

            await eventually(decide, lambda n: n == 0, within=30)


async def test_active_tips_are_the_same_on_every_replica(
    replicas: tuple[Rig, ServiceServer], channels: tuple[grpc.aio.Channel, grpc.aio.Channel]
) -> None:
    """A screen served by either replica shows one decision's tips (no second decision),
    and a reaction on one replica takes the tip away on the other."""
    rig, _ = replicas
    user = f"u_{secrets.token_hex(5)}"
    md: Any = as_user(user)
    a_channel, b_channel = channels
    a, b_stub = (rec_grpc.RecommenderServiceStub(c) for c in (a_channel, b_channel))

    async def names(stub: Any) -> list[str]:
        answer = await stub.ListTips(
            rec.ListTipsRequest(parent=f"users/{user}", page_size=5), metadata=md, timeout=10
        )
        return [t.name for t in answer.tips]

    decided = await a.DecideTips(
        rec.DecideTipsRequest(parent=f"users/{user}", page_size=2), metadata=md, timeout=10
    )
    shown = [t.name for t in decided.tips]
    assert len(shown) == 2
    await eventually(lambda: names(b_stub), lambda got: got == shown, within=30)
    rows = await rig.db.fetchval("SELECT count(*) FROM recommender.tips WHERE user_id = $1", user)
    assert rows == 2  # B showed A's decision; it decided nothing itself

    await b_stub.ReactToTip(
        rec.ReactToTipRequest(name=shown[0], reaction=signal_pb2.TIP_REACTION_DONE),
        metadata=md,
        timeout=10,
    )
    after = await names(b_stub)
    assert after == shown[1:], {"after": after, "shown": shown}
    await eventually(lambda: names(a), lambda got: got == shown[1:], within=30)


async def test_two_replicas_behind_the_gateway_show_one_decision(
    replicas: tuple[Rig, ServiceServer], settings: Settings
) -> None:
    """The REST edge with TIPS_RECOMMENDER_ADDR naming both replicas: its calls take
    turns, and every refresh shows the tips of one decision; a reaction through the
    edge takes its tip away on both."""
    rig, b = replicas
    edge_settings = settings.model_copy(
        update={"recommender_addr": f"{rig.recommender.address},{b.address}"}
    )
    upstreams = Upstreams.from_settings(edge_settings)
    app = create_app(
        edge_settings, upstreams, auth=edge_auth_from_settings(edge_settings, upstreams)
    )
    user = f"u_{secrets.token_hex(5)}"
    auth = dict(as_user(user))
    headers = {"Authorization": auth["authorization"]}
    tips_url = f"/v1/users/{user}/tips?pageSize=2"
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://edge"
    ) as client:
        try:
            first = await client.get(tips_url, headers=headers)
            assert first.status_code == 200, first.text
            shown = [t["name"] for t in first.json()["tips"]]
            assert len(shown) == 2
            for _ in range(6):  # three on each replica
                again = await client.get(tips_url, headers=headers)
                assert [t["name"] for t in again.json()["tips"]] == shown
            decided = await rig.db.fetchval(
                "SELECT count(*) FROM recommender.tips WHERE user_id = $1", user
            )
            assert decided == 2

            reacted = await client.post(
                f"/v1/{shown[0]}:react", headers=headers, json={"reaction": "TIP_REACTION_DONE"}
            )
            assert reacted.status_code == 200, reacted.text

            async def both() -> list[list[str]]:
                pages = [await client.get(tips_url, headers=headers) for _ in range(2)]
                return [[t["name"] for t in p.json()["tips"]] for p in pages]

            await eventually(both, lambda pages: pages == [shown[1:], shown[1:]], within=30)
        finally:
            await upstreams.close()


async def test_each_replica_sees_every_signal_and_none_is_lost(
    replicas: tuple[Rig, ServiceServer], channels: tuple[grpc.aio.Channel, grpc.aio.Channel]
) -> None:
    """The replicas share the context consumer, so each folds a share of a user's
    signals: every replica's memory and the stored context still count them all."""
    rig, _ = replicas
    user = f"u_{secrets.token_hex(5)}"
    sent = 40
    async with grpc.aio.insecure_channel(rig.events.address) as events_channel:
        await _ingest_one_by_one(ev_grpc.EventsServiceStub(events_channel), user, sent)

    async def stored() -> int:
        row = await rig.db.fetchrow(
            "SELECT context FROM recommender.user_context WHERE user_id = $1", user
        )
        return 0 if row is None else int(json.loads(row["context"])["signal_count"])

    await eventually(stored, lambda n: n == sent, within=60)
    for channel in channels:

        async def counted(channel: grpc.aio.Channel = channel) -> float:
            got = await rec_grpc.RecommenderInternalServiceStub(channel).GetDecisionContext(
                rec.GetDecisionContextRequest(name=f"users/{user}/decisionContext"), timeout=10
            )
            values = {f.name: f.value for f in got.decision_context.features}
            return values.get("signal_count", 0.0)

        await eventually(counted, lambda n: n == sent, within=30)


async def test_an_erased_user_is_forgotten_by_every_replica(
    replicas: tuple[Rig, ServiceServer], channels: tuple[grpc.aio.Channel, grpc.aio.Channel]
) -> None:
    """One replica takes the shared erasure consumer's message; the other still
    forgets the user's active tips (its own feed of UserDeleted)."""
    rig, _ = replicas
    user = f"u_{secrets.token_hex(5)}"
    md: Any = as_user(user)
    stubs = [rec_grpc.RecommenderServiceStub(c) for c in channels]

    async def names(stub: Any) -> list[str]:
        answer = await stub.ListTips(
            rec.ListTipsRequest(parent=f"users/{user}", page_size=5), metadata=md, timeout=10
        )
        return [t.name for t in answer.tips]

    decided = await stubs[0].DecideTips(
        rec.DecideTipsRequest(parent=f"users/{user}", page_size=2), metadata=md, timeout=10
    )
    shown = {t.name for t in decided.tips}
    await eventually(lambda: names(stubs[1]), lambda got: set(got) == shown, within=30)
    deleted = profile_events.UserDeleted(
        event_id=secrets.token_hex(8), occur_time=timestamp(datetime.now(UTC)), user=f"users/{user}"
    )
    await rig.bus.publish(deleted, msg_id=deleted.event_id)
    for stub in stubs:  # a screen after the erasure shows none of the erased tips
        await eventually(lambda stub=stub: names(stub), lambda got: not shown & set(got), within=30)


async def _ingest_one_by_one(events: ev_grpc.EventsServiceStub, user: str, count: int) -> None:
    """``count`` step signals, one call each: each replica takes some."""
    for i in range(count):
        now = datetime.now(UTC)
        signal = signal_pb2.Signal(
            client_signal_id=f"s{i}-{secrets.token_hex(4)}",
            kind=signal_pb2.SIGNAL_KIND_STEPS,
            source=signal_pb2.SIGNAL_SOURCE_PHONE,
            start_time=timestamp(now - timedelta(seconds=30)),
            end_time=timestamp(now),
            steps=signal_pb2.StepsPayload(count=10),
        )
        await events.BatchIngestSignals(
            ev.BatchIngestSignalsRequest(parent=f"users/{user}", signals=[signal]),
            metadata=as_user(user),
            timeout=10,
        )

"""Two recommender replicas on one database and one NATS learn from every reward.

Replica A runs with the events service (tests/support/recommender_rig.py);
replica B is a second recommender process's worth of the same service. A
reward landed on A reaches B's policy through ``RewardAssigned`` (and B's
reconcile pass would find it in the table otherwise), and is folded in once.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kernel.server import ServiceServer
from kernel.settings import Settings
from services.recommender.service import definition
from services.recommender.settings import RecommenderSettings
from tests.support.recommender_rig import Rig, events_and_recommender
from tests.support.tokens import as_user
from tests.support.waiting import eventually
from tips.events.v1 import signal_pb2
from tips.recommender.v1 import recommender_service_pb2 as rec
from tips.recommender.v1 import recommender_service_pb2_grpc as rec_grpc

pytestmark = pytest.mark.integration

# No timeout rewards during the test: every reward here is a reaction.
QUIET = {"recommender_reward_wait_seconds": 3600.0, "recommender_reward_reconcile_seconds": 0.2}


@pytest.fixture
async def replicas(
    settings: Settings, nats_url: str, database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Rig, ServiceServer]]:
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
        b = ServiceServer(definition(f"rec-replica-b{secrets.token_hex(3)}"), b_settings, port=0)
        await b.start()
        try:
            yield rig, b
        finally:
            await b.stop(grace=0)


async def _updates(channel: grpc.aio.Channel) -> int:
    status = await rec_grpc.RecommenderInternalServiceStub(channel).GetPolicyStatus(
        rec.GetPolicyStatusRequest(), timeout=10
    )
    return int(status.online_update_count)


async def test_a_reward_on_one_replica_is_learned_once_by_the_other(
    replicas: tuple[Rig, ServiceServer],
) -> None:
    rig, b = replicas
    user = f"u_{secrets.token_hex(5)}"
    md: Any = as_user(user)
    async with (
        grpc.aio.insecure_channel(rig.recommender.address) as a_channel,
        grpc.aio.insecure_channel(b.address) as b_channel,
    ):
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
        # A folded both at commit; B folds both from the feed.
        assert await _updates(a_channel) == a_before + 2
        await eventually(lambda: _updates(b_channel), lambda n: n >= b_before + 2, within=30)
        # Once each: the feed, the reconcile passes (every 0.2 s) and A's own copy of
        # the events fold nothing twice.
        await asyncio.sleep(1.0)
        assert await _updates(b_channel) == b_before + 2
        assert await _updates(a_channel) == a_before + 2

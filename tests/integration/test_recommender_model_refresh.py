"""The recommender exports its model again after every N rewards (policy.serving's rule),
so the shared part that serves follows the live statistics as the benches assume.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from kernel.settings import Settings
from policy import onnx_export
from tests.support.recommender_rig import Rig, events_and_recommender
from tests.support.tokens import as_user
from tests.support.waiting import eventually
from tips.events.v1 import signal_pb2
from tips.recommender.v1 import recommender_service_pb2 as rec
from tips.recommender.v1 import recommender_service_pb2_grpc as rec_grpc

pytestmark = pytest.mark.integration

REFRESH = 3


@pytest.fixture(scope="module")
async def rig(
    settings: Settings, nats_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Rig, Path]]:
    models = tmp_path_factory.mktemp("refresh-models")
    async with events_and_recommender(
        settings,
        nats_url,
        database_url,
        models,
        recommender_model_refresh_updates=REFRESH,
        recommender_seed=11,
    ) as started:
        yield started, models


async def test_the_model_is_exported_again_after_every_n_rewards(rig: tuple[Rig, Path]) -> None:
    started, models = rig
    async with grpc.aio.insecure_channel(started.recommender.address) as channel:
        tips = rec_grpc.RecommenderServiceStub(channel)
        internal = rec_grpc.RecommenderInternalServiceStub(channel)

        async def status() -> rec.GetPolicyStatusResponse:
            return await internal.GetPolicyStatus(rec.GetPolicyStatusRequest(), timeout=10)

        first = (await status()).model_version
        versions_before = len(onnx_export.versions(models))

        async def one_reward() -> None:
            user = f"u_{secrets.token_hex(5)}"
            md = as_user(user)
            [tip] = (
                await tips.ListTips(
                    rec.ListTipsRequest(parent=f"users/{user}", page_size=1), metadata=md
                )
            ).tips
            await tips.ReactToTip(
                rec.ReactToTipRequest(name=tip.name, reaction=signal_pb2.TIP_REACTION_DONE),
                metadata=md,
            )

        for _ in range(REFRESH - 1):
            await one_reward()
        assert (await status()).model_version == first  # not yet: two rewards of three
        await one_reward()
        refreshed = await eventually(status, lambda s: s.model_version != first)
        assert refreshed.online_update_count < REFRESH  # counted from the new model
        assert len(onnx_export.versions(models)) >= min(versions_before + 1, 3)
        # Decisions now carry the new version.
        user = f"u_{secrets.token_hex(5)}"
        [tip] = (
            await tips.ListTips(
                rec.ListTipsRequest(parent=f"users/{user}", page_size=1), metadata=as_user(user)
            )
        ).tips
        assert tip.model_version == refreshed.model_version

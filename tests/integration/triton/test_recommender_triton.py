"""The recommender's path to Triton (docs/decisions.md 37): the recommender
service, configured with a real tritonserver, scores its decisions there, with
no service in between; with Triton stopped it still decides, scoring in its
own process, and says so in GetPolicyStatus."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from tritonclient.grpc.aio import InferenceServerClient  # type: ignore[import-untyped]

from kernel.settings import Settings
from policy.bandit import Policy
from policy.onnx_export import MODEL_NAME, export, write_python_backend
from tests.support.recommender_rig import events_and_recommender
from tests.support.tokens import as_user
from tips.ml_serving.v1 import model_pb2
from tips.recommender.v1 import recommender_service_pb2 as rec
from tips.recommender.v1 import recommender_service_pb2_grpc as rec_grpc
from tipsmesh.localinfra import LocalTriton

pytestmark = pytest.mark.integration


async def _inferences(url: str) -> int:
    """Requests Triton has answered for the policy's model, every version."""
    client = InferenceServerClient(url)
    try:
        stats = await client.get_inference_statistics(MODEL_NAME)
    finally:
        await client.close()
    return sum(int(m.inference_stats.success.count) for m in stats.model_stats)


async def _decide(tips: rec_grpc.RecommenderServiceStub) -> rec.ListTipsResponse:
    user = f"u_{secrets.token_hex(5)}"
    request = rec.ListTipsRequest(parent=f"users/{user}", page_size=1)
    return await tips.ListTips(request, metadata=as_user(user), timeout=30)


async def test_decisions_are_scored_by_triton_and_in_process_once_it_stops(
    settings: Settings,
    nats_url: str,
    database_url: str,
    tmp_path: Path,
    triton_factory: Callable[[Path], LocalTriton],
) -> None:
    repo = tmp_path / "models"
    export(Policy(), repo)
    write_python_backend(repo)  # pytriton's server has only the python backend
    triton = triton_factory(repo)
    async with (
        events_and_recommender(
            settings, nats_url, database_url, repo, recommender_triton_url=triton.url
        ) as rig,
        grpc.aio.insecure_channel(rig.recommender.address) as channel,
    ):
        tips = rec_grpc.RecommenderServiceStub(channel)
        internal = rec_grpc.RecommenderInternalServiceStub(channel)

        before = await _inferences(triton.url)
        assert (await _decide(tips)).tips
        assert await _inferences(triton.url) > before  # the decision's scores came from Triton
        status = await internal.GetPolicyStatus(rec.GetPolicyStatusRequest(), timeout=10)
        assert status.runtime == model_pb2.MODEL_RUNTIME_TRITON
        assert status.triton_configured and status.triton_reachable
        assert (status.scorer_fallback_count, status.scorer_fell_back) == (0, False)

        await asyncio.to_thread(triton.stop)
        assert (await _decide(tips)).tips  # still decided: scored in process
        status = await internal.GetPolicyStatus(rec.GetPolicyStatusRequest(), timeout=10)
        assert status.runtime == model_pb2.MODEL_RUNTIME_ONNX_RUNTIME
        assert status.triton_configured and not status.triton_reachable
        assert status.scorer_fallback_count >= 1 and status.scorer_fell_back

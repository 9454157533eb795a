"""ml_serving over gRPC, in process on a free port, on a temporary model
repository: scoring matches the policy, versions load and unload without a
gap, bad input names the field; a configured but stopped Triton falls back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from kernel.errors import field_violations
from kernel.server import ServiceServer
from kernel.settings import Settings
from policy.bandit import Policy
from policy.features import DIM
from policy.onnx_export import export
from services.ml_serving.service import SERVICE
from services.ml_serving.settings import MlServingSettings
from tips.ml_serving.v1 import ml_serving_service_pb2 as pb
from tips.ml_serving.v1 import ml_serving_service_pb2_grpc as pb_grpc
from tips.ml_serving.v1 import model_pb2
from tipsmesh.localinfra import free_port


def _policy(seed: int) -> Policy:
    rng = np.random.default_rng(seed)
    policy = Policy()
    for i in range(200):
        policy.update(f"t{i % 5}", rng.normal(size=DIM), float(rng.random() < 0.4))
    return policy


async def _serve(
    settings: MlServingSettings,
) -> AsyncIterator[pb_grpc.MlServingInternalServiceStub]:
    server = ServiceServer(SERVICE, settings, port=0)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            yield pb_grpc.MlServingInternalServiceStub(channel)
    finally:
        await server.stop(grace=0)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
async def stub(
    settings: Settings, repo: Path
) -> AsyncIterator[pb_grpc.MlServingInternalServiceStub]:
    export(_policy(1), repo)
    config = MlServingSettings(**{**settings.model_dump(), "ml_serving_model_repository": repo})
    async for s in _serve(config):
        yield s


def _rows(k: int) -> tuple[np.ndarray, list[pb.FeatureRow]]:
    x = np.random.default_rng(9).normal(size=(k, DIM))
    return x, [pb.FeatureRow(values=row.tolist()) for row in x]


async def test_score_matches_the_policy_and_names_runtime(
    stub: pb_grpc.MlServingInternalServiceStub,
) -> None:
    x, rows = _rows(6)
    reply = await stub.Score(pb.ScoreRequest(model_name="tip_scorer", rows=rows))
    assert reply.model_version == "1"
    assert reply.runtime == model_pb2.MODEL_RUNTIME_ONNX_RUNTIME
    got = np.array([r.scores[0] for r in reply.rows])
    np.testing.assert_allclose(got, _policy(1).shared_scores(x), atol=1e-4)


async def test_new_version_loads_and_becomes_default_then_unloads(
    stub: pb_grpc.MlServingInternalServiceStub, repo: Path
) -> None:
    assert export(_policy(2), repo) == "2"
    loaded = await stub.LoadModel(pb.LoadModelRequest(model_name="tip_scorer"))
    assert loaded.model.default_version == "2"
    states = {v.version: v.state for v in loaded.model.versions}
    assert states == {"2": model_pb2.MODEL_STATE_READY, "1": model_pb2.MODEL_STATE_READY}
    ready = next(v for v in loaded.model.versions if v.version == "2")
    assert list(ready.inputs[0].shape) == [-1, DIM] and ready.outputs[0].name == "scores"

    x, rows = _rows(3)
    old = await stub.Score(pb.ScoreRequest(model_name="tip_scorer", model_version="1", rows=rows))
    new = await stub.Score(pb.ScoreRequest(model_name="tip_scorer", rows=rows))
    assert (old.model_version, new.model_version) == ("1", "2")
    np.testing.assert_allclose(
        [r.scores[0] for r in new.rows], _policy(2).shared_scores(x), atol=1e-4
    )

    after = await stub.UnloadModel(
        pb.UnloadModelRequest(model_name="tip_scorer", model_version="1")
    )
    assert {v.version: v.state for v in after.model.versions}["1"] == model_pb2.MODEL_STATE_UNLOADED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Score(pb.ScoreRequest(model_name="tip_scorer", model_version="1", rows=rows))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    reloaded = await stub.ReloadModels(pb.ReloadModelsRequest())
    assert [m.default_version for m in reloaded.models] == ["2"]
    listed = await stub.ListModels(pb.ListModelsRequest(ready_only=True))
    assert [m.model_name for m in listed.models] == ["tip_scorer"]


async def test_bad_requests_name_the_field(stub: pb_grpc.MlServingInternalServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Score(
            pb.ScoreRequest(model_name="tip_scorer", rows=[pb.FeatureRow(values=[1.0, 2.0])])
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "rows[0].values" in field_violations(err.value)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Score(pb.ScoreRequest(model_name="tip_scorer"))
    assert "rows" in field_violations(err.value)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetModel(pb.GetModelRequest(model_name="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Score(
            pb.ScoreRequest(model_name="tip_scorer", model_version="9", rows=_rows(1)[1])
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_unreachable_triton_falls_back_to_onnxruntime(settings: Settings, repo: Path) -> None:
    export(_policy(1), repo)
    config = MlServingSettings(
        **{
            **settings.model_dump(),
            "ml_serving_model_repository": repo,
            # Nothing listens there: Triton is "stopped".
            "ml_serving_triton_url": f"127.0.0.1:{free_port()}",
            "ml_serving_triton_timeout_seconds": 2.0,
        }
    )
    async for stub in _serve(config):
        x, rows = _rows(4)
        reply = await stub.Score(pb.ScoreRequest(model_name="tip_scorer", rows=rows))
        assert reply.runtime == model_pb2.MODEL_RUNTIME_ONNX_RUNTIME
        np.testing.assert_allclose(
            [r.scores[0] for r in reply.rows], _policy(1).shared_scores(x), atol=1e-4
        )
        model = await stub.GetModel(pb.GetModelRequest(model_name="tip_scorer"))
        assert model.model.runtime == model_pb2.MODEL_RUNTIME_TRITON

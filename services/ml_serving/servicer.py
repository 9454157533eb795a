"""gRPC servicer of the ml_serving service: thin adapter over ``registry``."""

from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf import timestamp_pb2

from policy.scoring import FallbackScorer, TritonScorer
from services.ml_serving.core import LoadedVersion, ModelEntry, ModelRegistry, Tensor
from tips.ml_serving.v1 import ml_serving_service_pb2 as pb
from tips.ml_serving.v1 import ml_serving_service_pb2_grpc, model_pb2

_TYPES: dict[str, model_pb2.TensorDataType.ValueType] = {
    "FP32": model_pb2.TENSOR_DATA_TYPE_FP32,
    "FP64": model_pb2.TENSOR_DATA_TYPE_FP64,
    "INT64": model_pb2.TENSOR_DATA_TYPE_INT64,
    "BYTES": model_pb2.TENSOR_DATA_TYPE_BYTES,
}


class _InProcess:
    """The registry's loaded version as a ``Scorer`` (the fallback of Triton)."""

    def __init__(self, registry: ModelRegistry, loaded: LoadedVersion) -> None:
        self.registry = registry
        self.loaded = loaded

    @property
    def model_version(self) -> str:
        return self.loaded.version

    async def score(self, rows: np.ndarray) -> np.ndarray:
        return await self.registry.score(self.loaded, rows)


class MlServingInternalServicer(ml_serving_service_pb2_grpc.MlServingInternalServiceServicer):
    """`tips.ml_serving.v1.MlServingInternalService` over a model repository.

    With ``triton_url`` set, Score goes to Triton first and falls back to ONNX
    Runtime in process (per model: Triton is retried after ``retry_s``).
    """

    def __init__(
        self,
        registry: ModelRegistry,
        triton_url: str = "",
        triton_timeout_s: float = 1.0,
        retry_s: float = 5.0,
    ) -> None:
        self.registry = registry
        self.triton_url = triton_url
        self.triton_timeout_s = triton_timeout_s
        self.retry_s = retry_s
        self._triton: dict[str, FallbackScorer] = {}

    @property
    def runtime(self) -> model_pb2.ModelRuntime.ValueType:
        return (
            model_pb2.MODEL_RUNTIME_TRITON
            if self.triton_url
            else model_pb2.MODEL_RUNTIME_ONNX_RUNTIME
        )

    def triton_health(self) -> dict[str, Any]:
        """Per model: whether Score falls back to ONNX Runtime, and why."""
        return {name: scorer.health() for name, scorer in self._triton.items()}

    async def close(self) -> None:
        for scorer in self._triton.values():
            primary = scorer.primary
            if isinstance(primary, TritonScorer):
                await primary.close()

    # --- RPCs ------------------------------------------------------------------------

    async def Score(self, request: pb.ScoreRequest, context: Any) -> pb.ScoreResponse:
        loaded = self.registry.resolve(request.model_name, request.model_version)
        data = self.registry.check_rows(loaded, [list(r.values) for r in request.rows])
        if not self.triton_url:
            out = await self.registry.score(loaded, data)
            runtime = model_pb2.MODEL_RUNTIME_ONNX_RUNTIME
        else:
            scorer = self._fallback_scorer(request.model_name, request.model_version, loaded)
            scorer.fallback = _InProcess(self.registry, loaded)
            out = np.asarray(await scorer.score(data), dtype=np.float32).reshape(len(data), -1)
            runtime = (
                model_pb2.MODEL_RUNTIME_ONNX_RUNTIME
                if scorer.using_fallback
                else model_pb2.MODEL_RUNTIME_TRITON
            )
        return pb.ScoreResponse(
            rows=[pb.ScoreRow(scores=row.tolist()) for row in out],
            model_version=loaded.version,
            runtime=runtime,
        )

    def _fallback_scorer(self, name: str, version: str, loaded: LoadedVersion) -> FallbackScorer:
        key = f"{name}:{version}"
        scorer = self._triton.get(key)
        if scorer is None:
            primary = TritonScorer(
                self.triton_url,
                name,
                version,
                self.triton_timeout_s,
                input_name=loaded.inputs[0].name,
                output_name=loaded.outputs[0].name,
            )
            scorer = FallbackScorer(primary, _InProcess(self.registry, loaded), self.retry_s)
            self._triton[key] = scorer
        return scorer

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Any
    ) -> pb.ListModelsResponse:
        models = [self._served(name) for name in self.registry.model_names()]
        if request.ready_only:
            models = [
                m for m in models if any(v.state == model_pb2.MODEL_STATE_READY for v in m.versions)
            ]
        return pb.ListModelsResponse(models=models)

    async def GetModel(self, request: pb.GetModelRequest, context: Any) -> pb.GetModelResponse:
        self.registry._check_name(request.model_name)
        return pb.GetModelResponse(model=self._served(request.model_name))

    async def LoadModel(self, request: pb.LoadModelRequest, context: Any) -> pb.LoadModelResponse:
        entry = await self.registry.load(request.model_name, request.model_version)
        return pb.LoadModelResponse(model=self._served(entry.name))

    async def UnloadModel(
        self, request: pb.UnloadModelRequest, context: Any
    ) -> pb.UnloadModelResponse:
        entry = self.registry.unload(request.model_name, request.model_version)
        return pb.UnloadModelResponse(model=self._served(entry.name))

    async def ReloadModels(
        self, request: pb.ReloadModelsRequest, context: Any
    ) -> pb.ReloadModelsResponse:
        entries = await self.registry.reload(list(request.model_names))
        return pb.ReloadModelsResponse(models=[self._served(e.name) for e in entries])

    # --- messages --------------------------------------------------------------------

    def _served(self, name: str) -> model_pb2.ServedModel:
        entry = self.registry.models.get(name) or ModelEntry(name)
        versions = []
        for version in self.registry.versions_on_disk(name):
            path = self.registry.repository / name / version / "model.onnx"
            item = model_pb2.ServedModelVersion(
                version=version, artifact_uri=path.resolve().as_uri()
            )
            loaded = entry.loaded.get(version)
            if loaded is not None:
                item.state = model_pb2.MODEL_STATE_READY
                item.inputs.extend(_spec(t) for t in loaded.inputs)
                item.outputs.extend(_spec(t) for t in loaded.outputs)
                item.output_labels.extend(loaded.labels)
                stamp = timestamp_pb2.Timestamp()
                stamp.FromDatetime(loaded.load_time)
                item.load_time.CopyFrom(stamp)
            elif version in entry.failed:
                item.state = model_pb2.MODEL_STATE_FAILED
                item.error_message = entry.failed[version]
            else:
                item.state = model_pb2.MODEL_STATE_UNLOADED
            versions.append(item)
        return model_pb2.ServedModel(
            model_name=name,
            runtime=self.runtime,
            default_version=entry.default_version,
            versions=versions,
        )


def _spec(t: Tensor) -> model_pb2.TensorSpec:
    return model_pb2.TensorSpec(
        name=t.name,
        data_type=_TYPES.get(t.data_type, model_pb2.TENSOR_DATA_TYPE_UNSPECIFIED),
        shape=list(t.shape),
    )


__all__ = ["MlServingInternalServicer"]

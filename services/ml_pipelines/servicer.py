"""gRPC servicer of the ml_pipelines service: thin adapters over its domain logic.

Every RPC needs the "admin" scope (the contract's access option says so).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kernel import paging
from kernel.identity import require_scope
from services.ml_pipelines import domain
from services.ml_pipelines.core.backfill import Backfiller, backfill_proto
from services.ml_pipelines.core.registry import Registry
from services.ml_pipelines.core.training import Trainer, run_proto
from tips.ml_pipelines.v1 import ml_pipelines_service_pb2 as pb
from tips.ml_pipelines.v1 import ml_pipelines_service_pb2_grpc as pb_grpc

ADMIN = "admin"
DEFAULT_PAGE, MAX_PAGE = 50, 500
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _size(requested: int) -> int:
    # The contract lowers larger values rather than rejecting them.
    return paging.page_size(min(requested, MAX_PAGE), default=DEFAULT_PAGE, maximum=MAX_PAGE)


class MlPipelinesServicer(pb_grpc.MlPipelinesServiceServicer):
    """`tips.ml_pipelines.v1.MlPipelinesService`."""

    def __init__(self, registry: Registry, trainer: Trainer, backfiller: Backfiller) -> None:
        self.registry = registry
        self.trainer = trainer
        self.backfiller = backfiller

    # --- models ----------------------------------------------------------------------------

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Any
    ) -> pb.ListModelsResponse:
        require_scope(ADMIN)
        size = _size(request.page_size)
        cursor = paging.decode(request.page_token, "models")
        models = await self.registry.list_models(cursor.id if cursor else "", size + 1)
        token = ""
        if len(models) > size:
            models = models[:size]
            token = paging.encode(paging.Cursor(_EPOCH, models[-1].name.split("/")[1]), "models")
        return pb.ListModelsResponse(models=models, next_page_token=token)

    async def GetModel(self, request: pb.GetModelRequest, context: Any) -> pb.GetModelResponse:
        require_scope(ADMIN)
        return pb.GetModelResponse(model=await self.registry.get_model(request.name))

    async def CreateModel(
        self, request: pb.CreateModelRequest, context: Any
    ) -> pb.CreateModelResponse:
        require_scope(ADMIN)
        return pb.CreateModelResponse(
            model=await self.registry.create_model(request.model_id, request.model)
        )

    # --- versions --------------------------------------------------------------------------

    async def ListModelVersions(
        self, request: pb.ListModelVersionsRequest, context: Any
    ) -> pb.ListModelVersionsResponse:
        require_scope(ADMIN)
        model = domain.parse_model(request.parent, "parent")
        size = _size(request.page_size)
        states = sorted(set(request.states))
        fingerprint = f"versions:{model}:{states}"
        cursor = paging.decode(request.page_token, fingerprint)
        before = int(cursor.id) if cursor else None
        versions = await self.registry.list_versions(model, states, before, size + 1)
        token = ""
        if len(versions) > size:
            versions = versions[:size]
            last = versions[-1].name.rsplit("/", 1)[1]
            token = paging.encode(paging.Cursor(_EPOCH, last), fingerprint)
        return pb.ListModelVersionsResponse(model_versions=versions, next_page_token=token)

    async def GetModelVersion(
        self, request: pb.GetModelVersionRequest, context: Any
    ) -> pb.GetModelVersionResponse:
        require_scope(ADMIN)
        return pb.GetModelVersionResponse(
            model_version=await self.registry.get_version(request.name)
        )

    async def CreateModelVersion(
        self, request: pb.CreateModelVersionRequest, context: Any
    ) -> pb.CreateModelVersionResponse:
        require_scope(ADMIN)
        version = await self.registry.create_version(
            request.parent, request.model_version, request.request_id
        )
        return pb.CreateModelVersionResponse(model_version=version)

    async def EvaluateModelVersion(
        self, request: pb.EvaluateModelVersionRequest, context: Any
    ) -> pb.EvaluateModelVersionResponse:
        require_scope(ADMIN)
        result = await self.registry.evaluate(
            request.name,
            list(request.estimators),
            request.primary_estimator,
            request.data_window,
            request.confidence_level,
            request.HasField("data_window"),
        )
        return pb.EvaluateModelVersionResponse(evaluation=result)

    async def PromoteModelVersion(
        self, request: pb.PromoteModelVersionRequest, context: Any
    ) -> pb.PromoteModelVersionResponse:
        require_scope(ADMIN)
        version = await self.registry.promote(request.name, request.force, request.reason)
        return pb.PromoteModelVersionResponse(model_version=version)

    # --- training runs ---------------------------------------------------------------------

    async def CreateTrainingRun(
        self, request: pb.CreateTrainingRunRequest, context: Any
    ) -> pb.CreateTrainingRunResponse:
        require_scope(ADMIN)
        run = await self.trainer.create(request.training_run, request.training_run_id)
        return pb.CreateTrainingRunResponse(training_run=run)

    async def GetTrainingRun(
        self, request: pb.GetTrainingRunRequest, context: Any
    ) -> pb.GetTrainingRunResponse:
        require_scope(ADMIN)
        return pb.GetTrainingRunResponse(training_run=await self.trainer.get(request.name))

    async def ListTrainingRuns(
        self, request: pb.ListTrainingRunsRequest, context: Any
    ) -> pb.ListTrainingRunsResponse:
        require_scope(ADMIN)
        model = domain.parse_model(request.model, "model") if request.model else None
        size = _size(request.page_size)
        states = sorted(set(request.states))
        fingerprint = f"runs:{model}:{states}"
        cursor = paging.decode(request.page_token, fingerprint)
        rows = await self.trainer.list(
            model, states, (cursor.time, cursor.id) if cursor else None, size + 1
        )
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = paging.encode(paging.Cursor(rows[-1].create_time, rows[-1].run_id), fingerprint)
        return pb.ListTrainingRunsResponse(
            training_runs=[run_proto(r) for r in rows], next_page_token=token
        )

    async def CancelTrainingRun(
        self, request: pb.CancelTrainingRunRequest, context: Any
    ) -> pb.CancelTrainingRunResponse:
        require_scope(ADMIN)
        return pb.CancelTrainingRunResponse(training_run=await self.trainer.cancel(request.name))

    # --- feature backfills -----------------------------------------------------------------

    async def CreateFeatureBackfill(
        self, request: pb.CreateFeatureBackfillRequest, context: Any
    ) -> pb.CreateFeatureBackfillResponse:
        require_scope(ADMIN)
        backfill = await self.backfiller.create(
            request.feature_backfill, request.feature_backfill_id
        )
        return pb.CreateFeatureBackfillResponse(feature_backfill=backfill)

    async def GetFeatureBackfill(
        self, request: pb.GetFeatureBackfillRequest, context: Any
    ) -> pb.GetFeatureBackfillResponse:
        require_scope(ADMIN)
        return pb.GetFeatureBackfillResponse(
            feature_backfill=await self.backfiller.get(request.name)
        )

    async def ListFeatureBackfills(
        self, request: pb.ListFeatureBackfillsRequest, context: Any
    ) -> pb.ListFeatureBackfillsResponse:
        require_scope(ADMIN)
        size = _size(request.page_size)
        states = sorted(set(request.states))
        fingerprint = f"backfills:{states}"
        cursor = paging.decode(request.page_token, fingerprint)
        rows = await self.backfiller.list(
            states, (cursor.time, cursor.id) if cursor else None, size + 1
        )
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = paging.encode(
                paging.Cursor(rows[-1].create_time, rows[-1].backfill_id), fingerprint
            )
        return pb.ListFeatureBackfillsResponse(
            feature_backfills=[backfill_proto(r) for r in rows], next_page_token=token
        )

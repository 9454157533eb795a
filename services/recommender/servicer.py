"""gRPC servicers of the recommender: parse, check the caller, decide/store, answer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kernel.clients import channel
from kernel.db import Database
from kernel.errors import InvalidArgument, NotFound
from kernel.identity import require_owner, require_user_parent
from kernel.ids import random_id
from kernel.names import user_name
from kernel.outbox import enqueue
from kernel.settings import Settings
from kernel.timestamps import datetime_of, timedelta_of, timestamp
from policy import bandit
from services.recommender import domain, reward_store, store
from services.recommender.core.decisions import FEATURE_SCHEMA_VERSION, DecisionEngine
from services.recommender.core.reactions import reaction_signal
from tips.events.v1 import events_service_pb2, events_service_pb2_grpc, signal_pb2
from tips.ml_serving.v1 import model_pb2
from tips.recommender.v1 import context_pb2, events_pb2, tip_pb2
from tips.recommender.v1 import recommender_service_pb2 as pb
from tips.recommender.v1 import recommender_service_pb2_grpc as pb_grpc

ACCEPTED = events_service_pb2.INGEST_OUTCOME_ACCEPTED
REJECTED = events_service_pb2.INGEST_OUTCOME_REJECTED


class RecommenderServicer(pb_grpc.RecommenderServiceServicer):
    """``tips.recommender.v1.RecommenderService``: tips, history, reactions."""

    def __init__(self, db: Database, engine: DecisionEngine, settings: Settings) -> None:
        self.db = db
        self.engine = engine
        self.settings = settings

    async def ListTips(self, request: pb.ListTipsRequest, context: Any) -> pb.ListTipsResponse:
        user_id = require_user_parent(request.parent)
        count = domain.tip_count(request.page_size)
        tips = await self.engine.current(user_id, count, datetime.now(UTC))
        return pb.ListTipsResponse(tips=tips)

    async def DecideTips(
        self, request: pb.DecideTipsRequest, context: Any
    ) -> pb.DecideTipsResponse:
        user_id = require_user_parent(request.parent)
        count = domain.tip_count(request.page_size)
        tips = await self.engine.decide(user_id, count, datetime.now(UTC))
        return pb.DecideTipsResponse(tips=tips)

    async def GetTip(self, request: pb.GetTipRequest, context: Any) -> pb.GetTipResponse:
        return pb.GetTipResponse(tip=await self._owned_tip(request.name))

    async def ListTipHistory(
        self, request: pb.ListTipHistoryRequest, context: Any
    ) -> pb.ListTipHistoryResponse:
        user_id = require_user_parent(request.parent)
        limit = domain.history_size(request.page_size)
        states = [int(s) for s in request.states]
        after = domain.parse_history_token(request.page_token, states)
        async with self.db.session() as session:
            tips, cursor = await store.list_tips(
                session, user_id, limit=limit, states=states, after=after
            )
        token = domain.history_token(states, *cursor) if cursor else ""
        return pb.ListTipHistoryResponse(tips=tips, next_page_token=token)

    async def ReactToTip(
        self, request: pb.ReactToTipRequest, context: Any
    ) -> pb.ReactToTipResponse:
        now = datetime.now(UTC)
        until = domain.snooze_until(
            request.reaction,
            now,
            until=datetime_of(request, "snooze_until"),
            duration=timedelta_of(request, "snooze_duration"),
        )
        client_id = domain.reaction_signal_id(request.request_id, request.name, request.reaction)
        tip = await self._owned_tip(request.name)
        signal = reaction_signal(client_id, tip.name, request.reaction, now, until)
        user_id, _ = domain.parse_tip_name(tip.name)
        result = await self._ingest(user_name(user_id), signal)
        if result.outcome == REJECTED:
            raise InvalidArgument([("name", f"the reaction was rejected: {result.error.message}")])
        if result.outcome == ACCEPTED:
            # Landed now, as the consumer would (same message id), so the answer shows it.
            await self.engine.contexts.apply(result.signal, user_id, signal)
        # A DUPLICATE (retried request_id) changes nothing: answer the tip as it is.
        answer = await self._owned_tip(tip.name)
        if answer.state != tip_pb2.TIP_STATE_ACTIVE:
            # Another replica's consumer may have landed it first (the message id
            # was taken): its RewardAssigned would close the tip here only later,
            # and this replica's next ListTips must not show it meanwhile.
            self.engine.history.close(user_id, tip.name)
        return pb.ReactToTipResponse(tip=answer)

    async def _ingest(
        self, parent: str, signal: signal_pb2.Signal
    ) -> events_service_pb2.IngestResult:
        """Forward a signal to the events service (the caller's identity goes along)."""
        stub = events_service_pb2_grpc.EventsServiceStub(channel(self.settings, "events"))
        response = await stub.BatchIngestSignals(
            events_service_pb2.BatchIngestSignalsRequest(parent=parent, signals=[signal])
        )
        result: events_service_pb2.IngestResult = response.results[0]
        return result

    async def _owned_tip(self, name: str) -> tip_pb2.Tip:
        user_id, tip_id = domain.parse_tip_name(name)
        require_owner(name, "name")
        async with self.db.session() as session:
            tip = await store.get_tip(session, user_id, tip_id)
        if tip is None:
            raise NotFound(name, resource_type="tips.app/Tip")
        return tip


class RecommenderInternalServicer(pb_grpc.RecommenderInternalServiceServicer):
    """``tips.recommender.v1.RecommenderInternalService``: never routed at the edge."""

    def __init__(self, db: Database, engine: DecisionEngine) -> None:
        self.db = db
        self.engine = engine
        self.learner = engine.learner

    async def GetDecisionContext(
        self, request: pb.GetDecisionContextRequest, context: Any
    ) -> pb.GetDecisionContextResponse:
        parts = request.name.split("/")
        if len(parts) != 3 or parts[0] != "users" or not parts[1] or parts[2] != "decisionContext":
            raise InvalidArgument([("name", "must be users/{user}/decisionContext")])
        now = datetime.now(UTC)
        ctx, _, features = await self.engine.situation(parts[1], now)
        out = context_pb2.DecisionContext(
            name=request.name,
            features=[context_pb2.ContextFeature(name=k, value=v) for k, v in features.as_pairs()],
            feature_schema_version=FEATURE_SCHEMA_VERSION,
            compute_time=timestamp(now),
            signal_count=ctx.signal_count,
        )
        if ctx.last_signal_time is not None:
            out.last_signal_time.CopyFrom(timestamp(ctx.last_signal_time))
        return pb.GetDecisionContextResponse(decision_context=out)

    async def ExportPolicyModel(
        self, request: pb.ExportPolicyModelRequest, context: Any
    ) -> pb.ExportPolicyModelResponse:
        if request.model_name and request.model_name != self.learner.model_name:
            raise InvalidArgument(
                [("model_name", f"this recommender exports {self.learner.model_name!r} only")]
            )
        if len(request.request_id) > 128:
            raise InvalidArgument([("request_id", "at most 128 characters")])
        if request.request_id:
            async with self.db.session() as session:
                found = await reward_store.find_export(session, request.request_id)
            if found is not None:
                return _export_response(found)
        version, base, updates = await self.learner.export()
        now = datetime.now(UTC)
        values = {
            "request_id": request.request_id or random_id(),
            "model_version": version,
            "artifact_uri": self.learner.artifact_uri(version),
            "base_model_version": base,
            "online_update_count": updates,
            "export_time": now,
        }
        event = events_pb2.PolicyModelExported(
            event_id=f"export:{values['request_id']}",
            occur_time=timestamp(now),
            model_version=version,
            artifact_uri=str(values["artifact_uri"]),
            base_model_version=base,
            online_update_count=updates,
            policy_name=bandit.ALGORITHM,
            feature_schema_version=FEATURE_SCHEMA_VERSION,
        )
        async with self.db.transaction() as session:
            await reward_store.save_export(session, **values)
            await enqueue(session, store.outbox, event, msg_id=event.event_id)
        return pb.ExportPolicyModelResponse(
            model_version=version,
            artifact_uri=str(values["artifact_uri"]),
            base_model_version=base,
            online_update_count=updates,
            export_time=timestamp(now),
        )

    async def GetPolicyStatus(
        self, request: pb.GetPolicyStatusRequest, context: Any
    ) -> pb.GetPolicyStatusResponse:
        learner, fallback = self.learner, self.learner.fallback
        triton_configured = learner.triton is not None
        reachable = triton_configured and fallback is not None and not fallback.using_fallback
        runtime = (
            model_pb2.MODEL_RUNTIME_TRITON if reachable else model_pb2.MODEL_RUNTIME_ONNX_RUNTIME
        )
        # Health details: decisions not scored by the preferred scorer (docs/operations.md).
        onnx_fallbacks = fallback.fallbacks if fallback is not None else 0
        runtime_fell_back = fallback is not None and fallback.using_fallback
        return pb.GetPolicyStatusResponse(
            policy_name=bandit.ALGORITHM,
            model_version=learner.model_version,
            runtime=runtime,
            triton_configured=triton_configured,
            triton_reachable=reachable,
            model_load_time=timestamp(learner.model_load_time),
            online_update_count=learner.online_updates,
            catalog_version=self.engine.catalog.version,
            enabled_catalog_tip_count=self.engine.catalog.enabled_count,
            scorer_fallback_count=self.engine.scoring_failures + onnx_fallbacks,
            scorer_fell_back=self.engine.last_scoring_failed or runtime_fell_back,
        )


def _export_response(row: Any) -> pb.ExportPolicyModelResponse:
    return pb.ExportPolicyModelResponse(
        model_version=row.model_version,
        artifact_uri=row.artifact_uri,
        base_model_version=row.base_model_version,
        online_update_count=row.online_update_count,
        export_time=timestamp(row.export_time),
    )

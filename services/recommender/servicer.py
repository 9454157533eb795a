"""gRPC servicers of the recommender: parse, check the caller, decide/store, answer."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from kernel.clients import channel
from kernel.db import Database
from kernel.errors import InvalidArgument, NotFound
from kernel.identity import parse_user, require_owner
from kernel.outbox import enqueue
from kernel.settings import Settings
from services.recommender import decisions, domain, rules, store
from services.recommender.consumer import ContextKeeper
from tips.events.v1 import events_service_pb2, events_service_pb2_grpc, signal_pb2
from tips.recommender.v1 import recommender_service_pb2 as pb
from tips.recommender.v1 import recommender_service_pb2_grpc as pb_grpc
from tips.recommender.v1 import tip_catalog_service_pb2 as catalog_pb
from tips.recommender.v1 import tip_catalog_service_pb2_grpc as catalog_grpc
from tips.recommender.v1 import tip_pb2

ACCEPTED = events_service_pb2.INGEST_OUTCOME_ACCEPTED
REJECTED = events_service_pb2.INGEST_OUTCOME_REJECTED


def _require_user_parent(parent: str) -> str:
    user_id = parse_user(parent, "parent")
    if parent != f"users/{user_id}":
        raise InvalidArgument([("parent", f"must be users/{{user}}, got {parent!r}")])
    require_owner(parent, "parent")
    return user_id


class RecommenderServicer(pb_grpc.RecommenderServiceServicer):
    """``tips.recommender.v1.RecommenderService``: tips, history, reactions."""

    def __init__(self, db: Database, contexts: ContextKeeper, settings: Settings) -> None:
        self.db = db
        self.contexts = contexts
        self.settings = settings

    async def ListTips(self, request: pb.ListTipsRequest, context: Any) -> pb.ListTipsResponse:
        user_id = _require_user_parent(request.parent)
        count = decisions.tip_count(request.page_size)
        now = datetime.now(UTC)
        ctx = self.contexts.get(user_id)
        features = domain.features(ctx, now)
        proposals = rules.decide(features, ctx.suppressed_until, count)
        tips: list[tip_pb2.Tip] = []
        # Each tip and its TipDecided event commit together.
        async with self.db.transaction() as session:
            for rank, proposal in enumerate(proposals):
                tip_id = uuid.uuid4().hex
                tip = decisions.build_tip(store.tip_name(user_id, tip_id), proposal, now)
                await store.insert_tip(session, user_id, tip_id, tip)
                event = decisions.decided_event(request.parent, tip, rank, proposals, features)
                await enqueue(session, store.outbox, event, msg_id=tip.name)
                tips.append(tip)
        return pb.ListTipsResponse(tips=tips)

    async def GetTip(self, request: pb.GetTipRequest, context: Any) -> pb.GetTipResponse:
        return pb.GetTipResponse(tip=await self._owned_tip(request.name))

    async def ListTipHistory(
        self, request: pb.ListTipHistoryRequest, context: Any
    ) -> pb.ListTipHistoryResponse:
        user_id = _require_user_parent(request.parent)
        limit = decisions.history_size(request.page_size)
        states = [int(s) for s in request.states]
        after = decisions.parse_history_token(request.page_token, states)
        async with self.db.session() as session:
            tips, cursor = await store.list_tips(
                session, user_id, limit=limit, states=states, after=after
            )
        token = decisions.history_token(states, *cursor) if cursor else ""
        return pb.ListTipHistoryResponse(tips=tips, next_page_token=token)

    async def ReactToTip(
        self, request: pb.ReactToTipRequest, context: Any
    ) -> pb.ReactToTipResponse:
        now = datetime.now(UTC)
        has_until = request.HasField("snooze_until")
        until = domain.snooze_until(
            request.reaction,
            now,
            until=request.snooze_until.ToDatetime(UTC) if has_until else None,
            duration=(
                request.snooze_duration.ToTimedelta()
                if request.HasField("snooze_duration")
                else None
            ),
        )
        client_id = decisions.reaction_signal_id(request.request_id, request.name, request.reaction)
        tip = await self._owned_tip(request.name)
        signal = signal_pb2.Signal(
            client_signal_id=client_id,
            kind=signal_pb2.SIGNAL_KIND_TIP_REACTION,
            source=signal_pb2.SIGNAL_SOURCE_APP,
            tip_reaction=signal_pb2.TipReactionPayload(tip=tip.name, reaction=request.reaction),
        )
        signal.start_time.FromDatetime(now)
        if until is not None:
            signal.tip_reaction.snooze_until.FromDatetime(until)
        user_id, tip_id = decisions.parse_tip_name(tip.name)
        result = await self._ingest(f"users/{user_id}", signal)
        if result.outcome == REJECTED:
            raise InvalidArgument([("name", f"the reaction was rejected: {result.error.message}")])
        if result.outcome == ACCEPTED:
            # Land it now so the answer shows it; the consumer lands the same values again.
            async with self.db.transaction() as session:
                await store.apply_reaction(
                    session, user_id, tip_id, reaction=request.reaction, react_time=now,
                    snooze_until=until,
                )  # fmt: skip
        # A DUPLICATE (retried request_id) changes nothing: answer the tip as it is.
        return pb.ReactToTipResponse(tip=await self._owned_tip(tip.name))

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
        user_id, tip_id = decisions.parse_tip_name(name)
        require_owner(name, "name")
        async with self.db.session() as session:
            tip = await store.get_tip(session, user_id, tip_id)
        if tip is None:
            raise NotFound(name, resource_type="tips.app/Tip")
        return tip


class RecommenderInternalServicer(pb_grpc.RecommenderInternalServiceServicer):
    """``tips.recommender.v1.RecommenderInternalService``: not implemented yet."""

    async def GetDecisionContext(
        self, request: pb.GetDecisionContextRequest, context: Any
    ) -> pb.GetDecisionContextResponse:
        raise NotImplementedError("GetDecisionContext")

    async def ExportPolicyModel(
        self, request: pb.ExportPolicyModelRequest, context: Any
    ) -> pb.ExportPolicyModelResponse:
        raise NotImplementedError("ExportPolicyModel")

    async def GetPolicyStatus(
        self, request: pb.GetPolicyStatusRequest, context: Any
    ) -> pb.GetPolicyStatusResponse:
        raise NotImplementedError("GetPolicyStatus")


class TipCatalogServicer(catalog_grpc.TipCatalogServiceServicer):
    """``tips.recommender.v1.TipCatalogService``: not implemented yet (built-in catalog)."""

    async def ListCatalogTips(
        self, request: catalog_pb.ListCatalogTipsRequest, context: Any
    ) -> catalog_pb.ListCatalogTipsResponse:
        raise NotImplementedError("ListCatalogTips")

    async def GetCatalogTip(
        self, request: catalog_pb.GetCatalogTipRequest, context: Any
    ) -> catalog_pb.GetCatalogTipResponse:
        raise NotImplementedError("GetCatalogTip")

    async def CreateCatalogTip(
        self, request: catalog_pb.CreateCatalogTipRequest, context: Any
    ) -> catalog_pb.CreateCatalogTipResponse:
        raise NotImplementedError("CreateCatalogTip")

    async def UpdateCatalogTip(
        self, request: catalog_pb.UpdateCatalogTipRequest, context: Any
    ) -> catalog_pb.UpdateCatalogTipResponse:
        raise NotImplementedError("UpdateCatalogTip")

    async def DeleteCatalogTip(
        self, request: catalog_pb.DeleteCatalogTipRequest, context: Any
    ) -> catalog_pb.DeleteCatalogTipResponse:
        raise NotImplementedError("DeleteCatalogTip")

    async def ImportCatalogTips(
        self, request: catalog_pb.ImportCatalogTipsRequest, context: Any
    ) -> catalog_pb.ImportCatalogTipsResponse:
        raise NotImplementedError("ImportCatalogTips")

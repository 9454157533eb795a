"""Registers the recommender's exports (``PolicyModelExported``) as CANDIDATE versions,
and keeps only the newest ``ml_pipelines_keep_exports`` of those nobody evaluated or
promoted (``mlflow_registry.prune_exports``).

The recommender wrote ``models/<model>/<version>/model.onnx`` itself; the
version keeps that directory number (the MLflow version is tagged with it,
whatever number MLflow gives it: ``mlflow_registry``). Claimed per message id,
and a version already registered is skipped, so redeliveries change nothing. An export whose file
is missing, outside the repository or not a scorer model is logged and
acknowledged: redelivering cannot fix it.
"""

from __future__ import annotations

import asyncio
import logging

from kernel.bus import Bus, Delivery
from kernel.consumers import consume_forever
from kernel.db import Database
from kernel.errors import InvalidArgument
from kernel.outbox import claim
from services.ml_pipelines import domain, repository, store
from services.ml_pipelines.core.registry import NewVersion, Registry
from tips.recommender.v1 import events_pb2 as rec_events

log = logging.getLogger(__name__)


class ExportConsumer:
    def __init__(self, db: Database, registry: Registry, durable: str) -> None:
        self.db = db
        self.registry = registry
        self.durable = durable

    async def handle(self, delivery: Delivery[rec_events.PolicyModelExported]) -> None:
        e = delivery.message
        where = {"msg_id": delivery.msg_id, "model_version": e.model_version}
        try:
            model, version = domain.parse_version(e.model_version, "model_version")
            path = await asyncio.to_thread(
                repository.artifact_path, e.artifact_uri, self.registry.repository, "artifact_uri"
            )
            await asyncio.to_thread(repository.check_model, path, "artifact_uri")
        except InvalidArgument as exc:
            log.error("export not registered", extra={**where, "error": exc.message})
            return
        registry = self.registry
        async with self.db.transaction() as session:
            if not await claim(
                session, store.processed_messages, consumer=self.durable,
                msg_id=delivery.msg_id or e.event_id,
            ):  # fmt: skip
                return
            await registry.lock_model(session, model)
            await registry.call(
                registry.mlflow.ensure_model,
                model,
                "policy exported by the recommender",
                e.policy_name,
            )
            if await registry.call(registry.mlflow.find_version, model, version) is None:
                await registry.register(
                    NewVersion(
                        model=model,
                        artifact=path,
                        feature_schema_version=e.feature_schema_version,
                        description=(
                            f"export of the online policy ({e.online_update_count} updates"
                            f" since {e.base_model_version or 'the start'})"
                        ),
                        metrics={"online_update_count": float(e.online_update_count)},
                        in_place=version,
                        origin="export",
                    ),
                )
        log.info("export registered", extra=where)
        # After the commit, and not part of it: a registry that fails to prune now
        # prunes at the next export (the newest are kept, whatever came before).
        keep = registry.settings.ml_pipelines_keep_exports
        try:
            pruned = await registry.call(registry.mlflow.prune_exports, model, keep)
        except Exception as exc:
            log.warning("older exports not deleted", extra={**where, "error": repr(exc)})
        else:
            if pruned:
                log.info("older exports deleted", extra={**where, "deleted": pruned})

    async def run(self, bus: Bus) -> None:
        await consume_forever(
            bus, rec_events.PolicyModelExported, durable=self.durable, handler=self.handle
        )

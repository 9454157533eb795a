"""The model registry: models, versions, off-policy evaluation and promotion."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.db import Database
from kernel.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from kernel.outbox import enqueue
from kernel.timestamps import optional_timestamp
from policy import bandit, features
from services.ml_pipelines import domain, repository, store
from services.ml_pipelines.core import evaluation
from services.ml_pipelines.settings import MlPipelinesSettings
from tips.ml_pipelines.v1 import events_pb2, model_pb2

log = logging.getLogger(__name__)
M, V = store.models, store.model_versions
S = model_pb2.ModelVersionState
ALGORITHMS = frozenset({bandit.ALGORITHM})
FEATURE_SCHEMA_VERSION = f"features-v1-d{features.DIM}"  # the recommender's engine writes the same
DEFAULT_EVAL_WINDOW = timedelta(days=14)


def model_proto(row: Any) -> model_pb2.Model:
    return model_pb2.Model(
        name=domain.model_name(row.model_id),
        description=row.description,
        algorithm=row.algorithm,
        promoted_version=(
            domain.version_name(row.model_id, row.promoted_version) if row.promoted_version else ""
        ),
        create_time=optional_timestamp(row.create_time),
        update_time=optional_timestamp(row.update_time),
    )


def version_proto(row: Any) -> model_pb2.ModelVersion:
    out = model_pb2.ModelVersion(
        name=domain.version_name(row.model_id, row.version),
        artifact_uri=row.artifact_uri,
        state=row.state,
        metrics={k: float(v) for k, v in (row.metrics or {}).items()},
        training_run=row.training_run,
        feature_schema_version=row.feature_schema_version,
        description=row.description,
        create_time=optional_timestamp(row.create_time),
        promote_time=optional_timestamp(row.promote_time),
    )
    if row.evaluation:
        out.evaluation.ParseFromString(row.evaluation)
    return out


@dataclass(frozen=True)
class NewVersion:
    """What registering a version needs."""

    model: str
    artifact: Path
    feature_schema_version: str
    description: str = ""
    metrics: dict[str, float] | None = None
    training_run: str = ""
    request_id: str | None = None
    # The version number the file already has in the repository (exports, trained runs).
    in_place: int | None = None


class Registry:
    def __init__(self, db: Database, settings: MlPipelinesSettings) -> None:
        self.db = db
        self.settings = settings
        self.repository = Path(settings.ml_pipelines_model_repository)

    # --- models ----------------------------------------------------------------------------

    async def create_model(self, model_id: str, model: model_pb2.Model) -> model_pb2.Model:
        problems = []
        if not domain.MODEL_ID.match(model_id):
            problems.append(
                (
                    "model_id",
                    "must be 3 to 63 lower case letters, digits and underscores, "
                    "starting with a letter",
                )
            )
        if model.algorithm not in ALGORITHMS:
            problems.append(("model.algorithm", f"must be one of {sorted(ALGORITHMS)}"))
        if len(model.description) > 1000:
            problems.append(("model.description", "at most 1000 characters"))
        if problems:
            raise InvalidArgument(problems)
        async with self.db.transaction() as session:
            row = (
                await session.execute(
                    insert(M)
                    .values(
                        model_id=model_id, description=model.description, algorithm=model.algorithm
                    )
                    .on_conflict_do_nothing()
                    .returning(*M.c)
                )
            ).first()
        if row is None:
            raise AlreadyExists(f"models/{model_id} already exists", metadata={"model": model_id})
        return model_proto(row)

    async def get_model_row(self, session: AsyncSession, model: str, lock: bool = False) -> Any:
        query = select(M).where(M.c.model_id == model)
        row = (await session.execute(query.with_for_update() if lock else query)).first()
        if row is None:
            raise NotFound(domain.model_name(model), resource_type="tips.app/Model")
        return row

    async def get_model(self, name: str) -> model_pb2.Model:
        model = domain.parse_model(name)
        async with self.db.session() as session:
            return model_proto(await self.get_model_row(session, model))

    async def list_models(self, after: str, limit: int) -> list[model_pb2.Model]:
        async with self.db.session() as session:
            rows = await session.execute(
                select(M).where(M.c.model_id > after).order_by(M.c.model_id).limit(limit)
            )
            return [model_proto(r) for r in rows]

    # --- versions --------------------------------------------------------------------------

    async def get_version_row(
        self, session: AsyncSession, model: str, version: int, lock: bool = False
    ) -> Any:
        query = select(V).where(V.c.model_id == model, V.c.version == version)
        row = (await session.execute(query.with_for_update() if lock else query)).first()
        if row is None:
            raise NotFound(
                domain.version_name(model, version), resource_type="tips.app/ModelVersion"
            )
        return row

    async def get_version(self, name: str) -> model_pb2.ModelVersion:
        model, version = domain.parse_version(name)
        async with self.db.session() as session:
            return version_proto(await self.get_version_row(session, model, version))

    async def list_versions(
        self, model: str, states: Sequence[int], before: int | None, limit: int
    ) -> list[model_pb2.ModelVersion]:
        async with self.db.session() as session:
            await self.get_model_row(session, model)
            query = select(V).where(V.c.model_id == model)
            if states:
                query = query.where(V.c.state.in_(list(states)))
            if before is not None:
                query = query.where(V.c.version < before)
            rows = await session.execute(query.order_by(V.c.version.desc()).limit(limit))
            return [version_proto(r) for r in rows]

    async def find_request(self, model: str, request_id: str) -> model_pb2.ModelVersion | None:
        async with self.db.session() as session:
            row = (
                await session.execute(
                    select(V).where(V.c.model_id == model, V.c.request_id == request_id)
                )
            ).first()
        return None if row is None else version_proto(row)

    async def next_version(self, session: AsyncSession, model: str) -> int:
        """One more than any version registered or on disk (call with the model row locked)."""
        registered = (
            await session.execute(select(func.max(V.c.version)).where(V.c.model_id == model))
        ).scalar() or 0
        on_disk = await asyncio.to_thread(repository.on_disk_versions, self.repository, model)
        return max([registered, *on_disk]) + 1

    async def register(self, new: NewVersion, session: AsyncSession) -> model_pb2.ModelVersion:
        """Registers ``new`` as a CANDIDATE in the caller's transaction (the model row locked)."""
        await self.get_model_row(session, new.model, lock=True)
        version = new.in_place
        path = new.artifact
        if version is None:
            version = await self.next_version(session, new.model)
            path = await asyncio.to_thread(
                repository.copy_in, new.artifact, self.repository, new.model, version
            )
        row = (
            await session.execute(
                insert(V)
                .values(
                    model_id=new.model,
                    version=version,
                    artifact_uri=repository.artifact_uri(path),
                    state=S.MODEL_VERSION_STATE_CANDIDATE,
                    metrics=new.metrics or {},
                    training_run=new.training_run,
                    feature_schema_version=new.feature_schema_version,
                    description=new.description,
                    request_id=new.request_id,
                )
                .returning(*V.c)
            )
        ).one()
        return version_proto(row)

    async def create_version(
        self, parent: str, version: model_pb2.ModelVersion, request_id: str
    ) -> model_pb2.ModelVersion:
        model = domain.parse_model(parent, "parent")
        problems = []
        if not version.artifact_uri:
            problems.append(("model_version.artifact_uri", "is required"))
        if not version.feature_schema_version:
            problems.append(("model_version.feature_schema_version", "is required"))
        elif version.feature_schema_version != FEATURE_SCHEMA_VERSION:
            problems.append(
                (
                    "model_version.feature_schema_version",
                    f"must be {FEATURE_SCHEMA_VERSION!r} (the scorer's rows)",
                )
            )
        if len(request_id) > 128:
            problems.append(("request_id", "at most 128 characters"))
        if problems:
            raise InvalidArgument(problems)
        if request_id:
            found = await self.find_request(model, request_id)
            if found is not None:
                return found
        async with self.db.session() as session:
            await self.get_model_row(session, model)
        field = "model_version.artifact_uri"
        path = await asyncio.to_thread(
            repository.artifact_path, version.artifact_uri, self.repository, field
        )
        await asyncio.to_thread(repository.check_model, path, field)
        new = NewVersion(
            model=model,
            artifact=path,
            feature_schema_version=version.feature_schema_version,
            description=version.description,
            metrics=dict(version.metrics),
            request_id=request_id or None,
        )
        async with self.db.transaction() as session:
            return await self.register(new, session)

    # --- evaluation ------------------------------------------------------------------------

    async def evaluate(
        self,
        name: str,
        estimators: Sequence[int],
        primary: int,
        window: Any,
        confidence: float,
        has_window: bool,
    ) -> model_pb2.OfflineEvaluation:
        model, version = domain.parse_version(name)
        kinds = evaluation.parse_estimators(estimators, primary)
        if confidence == 0.0:
            confidence = 0.95
        elif not 0.0 < confidence < 1.0:
            raise InvalidArgument([("confidence_level", "must be in (0, 1); 0 means 0.95")])
        now = datetime.now(UTC)
        if has_window:
            start, end = domain.parse_window(window, "data_window", now)
        else:
            start, end = now - DEFAULT_EVAL_WINDOW, now
        async with self.db.session() as session:
            row = await self.get_version_row(session, model, version)
            model_row = await self.get_model_row(session, model)
            baseline = None
            if model_row.promoted_version:
                baseline = await self.get_version_row(session, model, model_row.promoted_version)
            rows = await evaluation.load(
                session, start, end, self.settings.ml_pipelines_max_logged_rows
            )
        result, picks = await asyncio.to_thread(
            evaluation.run,
            rows,
            self.settings.ml_pipelines_catalog_path,
            self._stored_file(row),
            None if baseline is None else self._stored_file(baseline),
            kinds,
            confidence,
            self.settings.ml_pipelines_min_eval_decisions,
        )
        result.baseline_version = (
            "" if baseline is None else domain.version_name(model, baseline.version)
        )
        result.data_window.CopyFrom(domain.interval(start, end))
        result.evaluate_time.FromDatetime(datetime.now(UTC))
        # The result counts only the first picks it used; say what it left out.
        log.info(
            "model version evaluated on first picks",
            extra={
                "model_version": name,
                "first_picks": len(picks.rounds),
                "later_picks_left_out": picks.later_picks,
                "unknown_rank_left_out": picks.unknown_rank,
                "verdict": model_pb2.EvaluationVerdict.Name(result.verdict),
            },
        )
        async with self.db.transaction() as session:
            await session.execute(
                update(V)
                .where(V.c.model_id == model, V.c.version == version)
                .values(evaluation=result.SerializeToString())
            )
        return result

    def _stored_file(self, row: Any) -> Path:
        """The model file of a registered version; FailedPrecondition when it is gone."""
        name = domain.version_name(row.model_id, row.version)
        try:
            return repository.artifact_path(row.artifact_uri, self.repository, "artifact_uri")
        except InvalidArgument as exc:
            raise FailedPrecondition(
                f"the model file of {name} cannot be read: {exc.violations[0][1]}",
                reason="ARTIFACT_MISSING",
                metadata={"model_version": name},
            ) from None

    # --- promotion -------------------------------------------------------------------------

    async def promote(self, name: str, force: bool, reason: str) -> model_pb2.ModelVersion:
        model, version = domain.parse_version(name)
        if force and not reason.strip():
            raise InvalidArgument([("reason", "is required when force is set")])
        if len(reason) > 1000:
            raise InvalidArgument([("reason", "at most 1000 characters")])
        now = datetime.now(UTC)
        async with self.db.transaction() as session:
            model_row = await self.get_model_row(session, model, lock=True)
            row = await self.get_version_row(session, model, version, lock=True)
            if row.state == S.MODEL_VERSION_STATE_PROMOTED:
                return version_proto(row)  # already serving: nothing to do
            current = (
                domain.version_name(model, model_row.promoted_version)
                if model_row.promoted_version
                else ""
            )
            if not force:
                _check_promotable(row, current)
            if model_row.promoted_version:
                await session.execute(
                    update(V)
                    .where(V.c.model_id == model, V.c.version == model_row.promoted_version)
                    .values(state=S.MODEL_VERSION_STATE_ARCHIVED)
                )
            promoted = (
                await session.execute(
                    update(V)
                    .where(V.c.model_id == model, V.c.version == version)
                    .values(state=S.MODEL_VERSION_STATE_PROMOTED, promote_time=now)
                    .returning(*V.c)
                )
            ).one()
            await session.execute(
                update(M)
                .where(M.c.model_id == model)
                .values(promoted_version=version, update_time=now)
            )
            event = events_pb2.ModelVersionPromoted(
                event_id=f"promote:{model}:{version}:{uuid.uuid4().hex}",
                occur_time=optional_timestamp(now),
                model=domain.model_name(model),
                model_version=domain.version_name(model, version),
                artifact_uri=row.artifact_uri,
                previous_model_version=current,
                feature_schema_version=row.feature_schema_version,
                forced=force,
            )
            await enqueue(session, store.outbox, event, msg_id=event.event_id)
            # Pinned before the commit: a failed write rolls the promotion back.
            await asyncio.to_thread(repository.pin, self.repository, model, version)
        log.info(
            "model version promoted",
            extra={"model_version": name, "previous": current, "forced": force, "reason": reason},
        )
        return version_proto(promoted)


def _check_promotable(row: Any, current: str) -> None:
    name = domain.version_name(row.model_id, row.version)
    if not row.evaluation:
        raise FailedPrecondition(
            f"{name} has no evaluation: run :evaluate first, or promote with force and a reason",
            reason="NOT_EVALUATED",
            metadata={"model_version": name},
        )
    result = model_pb2.OfflineEvaluation.FromString(row.evaluation)
    if result.baseline_version != current:
        raise FailedPrecondition(
            f"{name} was evaluated against {result.baseline_version or 'no baseline'}, but "
            f"{current or 'no version'} is promoted now: evaluate it again",
            reason="STALE_BASELINE",
            metadata={
                "model_version": name,
                "baseline": result.baseline_version,
                "promoted": current,
            },
        )
    if result.verdict == model_pb2.EVALUATION_VERDICT_WORSE:
        raise FailedPrecondition(
            f"{name} evaluated WORSE than {current}: promote with force and a reason to override",
            reason="EVALUATED_WORSE",
            metadata={"model_version": name, "baseline": current},
        )

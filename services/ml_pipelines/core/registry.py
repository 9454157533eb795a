"""The model registry: models, versions, off-policy evaluation and promotion, kept in MLflow.

MLflow holds the models, the versions, their state and the promoted version
(``services.ml_pipelines.mlflow_registry``); the Triton repository holds the
serving copy of each version's files (``repository``); PostgreSQL holds what
MLflow cannot: the logged decisions, the training-run jobs and the outbox.
Work that allocates a version number or moves the promoted version holds
the model's advisory lock (``kernel.db.lock``), so replicas serialise on it.
Every MLflow call blocks: each goes through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from kernel.db import Database, lock
from kernel.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from kernel.outbox import enqueue
from kernel.timestamps import optional_timestamp, timestamp
from policy import bandit, features
from services.ml_pipelines import domain, promotion, repository, store
from services.ml_pipelines.core import evaluation
from services.ml_pipelines.mlflow_registry import (
    MODEL_DIR,
    MlflowRegistry,
    ModelRecord,
    NewVersionRecord,
    VersionRecord,
)
from services.ml_pipelines.settings import MlPipelinesSettings
from tips.ml_pipelines.v1 import events_pb2, model_pb2

log = logging.getLogger(__name__)
S = model_pb2.ModelVersionState
ALGORITHMS = frozenset({bandit.ALGORITHM})
FEATURE_SCHEMA_VERSION = features.SCHEMA_VERSION
DEFAULT_EVAL_WINDOW = timedelta(days=14)
T = TypeVar("T")


def model_proto(record: ModelRecord) -> model_pb2.Model:
    return model_pb2.Model(
        name=domain.model_name(record.model_id),
        description=record.description,
        algorithm=record.algorithm,
        promoted_version=(
            domain.version_name(record.model_id, record.promoted) if record.promoted else ""
        ),
        create_time=optional_timestamp(record.create_time),
        update_time=optional_timestamp(record.update_time),
    )


def version_proto(record: VersionRecord) -> model_pb2.ModelVersion:
    out = model_pb2.ModelVersion(
        name=domain.version_name(record.model_id, record.version),
        artifact_uri=record.artifact_uri,
        state=record.state,  # type: ignore[arg-type]
        metrics=record.metrics,
        training_run=record.training_run,
        feature_schema_version=record.feature_schema_version,
        description=record.description,
        create_time=optional_timestamp(record.create_time),
        promote_time=optional_timestamp(record.promote_time),
    )
    if record.evaluation:
        out.evaluation.ParseFromString(record.evaluation)
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
    origin: str = ""  # "export": one of the recommender's (mlflow_registry.prune_exports)


# MLflow and repository file calls; bounded, apart from the default executor.
_MLFLOW_THREADS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mlflow")


class Registry:
    def __init__(self, db: Database, settings: MlPipelinesSettings) -> None:
        self.db = db
        self.settings = settings
        self.repository = Path(settings.ml_pipelines_model_repository)
        self.mlflow = MlflowRegistry(settings.ml_pipelines_mlflow_uri)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` (an MLflow or file call) off the loop, in threads of its own:
        an MLflow that hangs fills these two, not the loop's default executor
        (which DNS lookups and the training maths use)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_MLFLOW_THREADS, functools.partial(fn, *args))

    async def open(self) -> None:
        """Connects to MLflow (a new sqlite registry gets its tables)."""
        await self.call(self.mlflow.open)

    @staticmethod
    async def lock_model(session: AsyncSession, model: str) -> None:
        """Serialises numbering and promotion of ``model`` until ``session`` commits."""
        await lock(session, f"ml_pipelines:model:{model}")

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
        record = await self.call(
            self.mlflow.create_model, model_id, model.description, model.algorithm
        )
        if record is None:
            raise AlreadyExists(f"models/{model_id} already exists", metadata={"model": model_id})
        return model_proto(record)

    async def model(self, model: str) -> ModelRecord:
        return await self.call(self.mlflow.get_model, model)

    async def get_model(self, name: str) -> model_pb2.Model:
        return model_proto(await self.model(domain.parse_model(name)))

    async def list_models(self, after: str, limit: int) -> list[model_pb2.Model]:
        return [model_proto(r) for r in await self.call(self.mlflow.list_models, after, limit)]

    # --- versions --------------------------------------------------------------------------

    async def version(self, model: str, version: int) -> VersionRecord:
        return await self.call(self.mlflow.version, model, version)

    async def get_version(self, name: str) -> model_pb2.ModelVersion:
        return version_proto(await self.version(*domain.parse_version(name)))

    async def list_versions(
        self, model: str, states: Sequence[int], before: int | None, limit: int
    ) -> list[model_pb2.ModelVersion]:
        await self.model(model)
        records = [
            r
            for r in await self.call(self.mlflow.versions, model)
            if (not states or r.state in states) and (before is None or r.version < before)
        ]
        return [version_proto(r) for r in records[:limit]]

    async def next_version(self, model: str) -> int:
        """One more than any version registered or on disk (call holding the model's lock)."""
        registered = await self.call(self.mlflow.highest, model)
        on_disk = await self.call(repository.on_disk_versions, self.repository, model)
        return max([registered, *on_disk]) + 1

    async def register(self, new: NewVersion, run_id: str | None = None) -> VersionRecord:
        """Registers ``new`` as a CANDIDATE from MLflow run ``run_id`` (one is made when
        None); the caller holds the model's lock. A file not in place is copied in
        under the next number."""
        version, path = new.in_place, new.artifact
        if version is None:
            version = await self.next_version(new.model)
            path = await self.call(
                repository.copy_in, new.artifact, self.repository, new.model, version
            )
        record = NewVersionRecord(
            model_id=new.model,
            version=version,
            directory=path.parent,
            artifact_uri=repository.artifact_uri(path),
            feature_schema_version=new.feature_schema_version,
            description=new.description,
            metrics=new.metrics,
            training_run=new.training_run,
            request_id=new.request_id or "",
            origin=new.origin,
        )
        return await self.call(self.mlflow.register, record, run_id)

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
        await self.model(model)
        field = "model_version.artifact_uri"
        path = await self.call(
            repository.artifact_path, version.artifact_uri, self.repository, field
        )
        await self.call(repository.check_model, path, field)
        new = NewVersion(
            model=model,
            artifact=path,
            feature_schema_version=version.feature_schema_version,
            description=version.description,
            metrics=dict(version.metrics),
            request_id=request_id or None,
        )
        async with self.db.transaction() as session:
            await self.lock_model(session, model)
            if request_id:  # a retry returns the first registration
                found = await self.call(self.mlflow.find_request, model, request_id)
                if found is not None:
                    return version_proto(found)
            return version_proto(await self.register(new))

    async def stored_file(self, record: VersionRecord) -> Path:
        """The version's model file in the repository, restored from its MLflow run when
        the directory was pruned; FailedPrecondition when neither has it."""
        name = domain.version_name(record.model_id, record.version)
        try:
            return await self.call(
                repository.artifact_path, record.artifact_uri, self.repository, "artifact_uri"
            )
        except InvalidArgument as exc:
            problem = exc.violations[0][1]
        if record.source:
            try:
                path = await self.call(self._restore, record)
            except Exception as exc:  # MLflow's own error: logged, not echoed (it may name URLs)
                log.warning(
                    "model version not restored from MLflow",
                    extra={"model_version": name, "error": type(exc).__name__},
                )
                problem = f"{problem}; restoring it from MLflow failed ({type(exc).__name__})"
            else:
                log.info("model version restored from MLflow", extra={"model_version": name})
                return path
        raise FailedPrecondition(
            f"the model file of {name} cannot be read: {problem}",
            reason="ARTIFACT_MISSING",
            metadata={"model_version": name},
        )

    def _restore(self, record: VersionRecord) -> Path:
        with tempfile.TemporaryDirectory() as tmp:
            self.mlflow.restore(record, Path(tmp))
            files = Path(tmp) / MODEL_DIR
            return repository.copy_in(
                files / "model.onnx", self.repository, record.model_id, record.version
            )

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
        record = await self.version(model, version)
        promoted = (await self.model(model)).promoted
        baseline = None if promoted is None else await self.version(model, promoted)
        target_file = await self.stored_file(record)
        baseline_file = None if baseline is None else await self.stored_file(baseline)
        async with self.db.session() as session:
            rows = await evaluation.load(
                session, start, end, self.settings.ml_pipelines_max_logged_rows
            )
        result, picks = await asyncio.to_thread(
            evaluation.run,
            rows,
            self.settings.ml_pipelines_catalog_path,
            target_file,
            baseline_file,
            kinds,
            confidence,
            self.settings.ml_pipelines_min_eval_decisions,
        )
        result.baseline_version = "" if promoted is None else domain.version_name(model, promoted)
        result.data_window.CopyFrom(domain.interval(start, end))
        result.evaluate_time.CopyFrom(timestamp(datetime.now(UTC)))
        run_id = await self.call(self.mlflow.log_evaluation, record, result)
        # The result counts only the first picks it used; say what it left out.
        log.info(
            "model version evaluated on first picks",
            extra={
                "model_version": name,
                "first_picks": len(picks.rounds),
                "later_picks_left_out": picks.later_picks,
                "unknown_rank_left_out": picks.unknown_rank,
                "verdict": model_pb2.EvaluationVerdict.Name(result.verdict),
                "mlflow_run": run_id,
            },
        )
        return result

    # --- promotion -------------------------------------------------------------------------

    @staticmethod
    def _promoted_event(
        name: str, record: VersionRecord, path: Path, previous: str, forced: bool, when: datetime
    ) -> events_pb2.ModelVersionPromoted:
        """The announcement; its id is the promotion's (version and time), so
        announcing it again changes nothing."""
        return events_pb2.ModelVersionPromoted(
            event_id=f"promote:{name}:{when.isoformat()}",
            occur_time=optional_timestamp(when),
            model=domain.model_name(record.model_id),
            model_version=name,
            artifact_uri=repository.artifact_uri(path),
            previous_model_version=previous,
            feature_schema_version=record.feature_schema_version,
            forced=forced,
        )

    async def promote(self, name: str, force: bool, reason: str) -> model_pb2.ModelVersion:
        model, version = domain.parse_version(name)
        if force and not reason.strip():
            raise InvalidArgument([("reason", "is required when force is set")])
        if len(reason) > 1000:
            raise InvalidArgument([("reason", "at most 1000 characters")])
        now = datetime.now(UTC)
        async with self.db.transaction() as session:
            await self.lock_model(session, model)
            promoted = (await self.model(model)).promoted
            record = await self.version(model, version)
            if record.state == S.MODEL_VERSION_STATE_PROMOTED:
                # Already promoted. Announced again, idempotently (same message id):
                # MLflow moves before the commit, so a commit that failed after it
                # left a promotion no event announced, and serving follows events.
                path = await self.stored_file(record)
                when = record.promote_time or now
                event = self._promoted_event(name, record, path, "", False, when)
                await enqueue(session, store.outbox, event, msg_id=event.event_id)
                return version_proto(record)
            current = domain.version_name(model, promoted) if promoted else ""
            if not force:
                promotion.check(
                    name, record.evaluation, current, self.settings.ml_pipelines_min_eval_decisions
                )
            previous = None if promoted is None else await self.version(model, promoted)
            path = await self.stored_file(record)
            event = self._promoted_event(name, record, path, current, force, now)
            await enqueue(session, store.outbox, event, msg_id=event.event_id)
            # Serving follows the event (the recommender asks Triton for the
            # version it serves, decision 34); a failed MLflow move rolls it back.
            await self.call(self.mlflow.promote, record, previous, now)
        log.info(
            "model version promoted",
            extra={"model_version": name, "previous": current, "forced": force, "reason": reason},
        )
        return version_proto(await self.version(model, version))

"""Training runs: train the policy offline on the logged decisions, export a CANDIDATE.

A run is QUEUED, then RUNNING in a background task (``runtime.spawn``): it
reads the joined decisions of its data window, folds them into a fresh
``bandit.Policy`` in chunks (progress and a cancel check between chunks, the
maths in a worker thread), writes ``models/<model>/<next version>/`` (ONNX +
statistics), registers it in MLflow as a CANDIDATE and publishes
``TrainingRunCompleted`` in the transaction that marks the run SUCCEEDED.
Runs left QUEUED or RUNNING by a restart start again.

Each attempt is an MLflow run in the model's experiment: the parameters and
data window as params, ``decisions``, ``mean_reward``, ``train_loss`` and
``progress`` after every chunk (step = rows learned so far), the version's
files as artifacts (``model/``), and the version registered from that run.
The job's state, its idempotency and cancellation stay in PostgreSQL
(``training_runs``): MLflow has no place for them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.rpc import status_pb2  # type: ignore[import-untyped]
from sqlalchemy import select, update

from kernel.db import Database
from kernel.deadline import deadline_in
from kernel.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound
from kernel.identity import acting_as
from kernel.outbox import enqueue
from kernel.timestamps import optional_timestamp
from policy import bandit
from services.ml_pipelines import domain, jobs, logged, offline, repository, store
from services.ml_pipelines.core.registry import (
    ALGORITHMS,
    FEATURE_SCHEMA_VERSION,
    NewVersion,
    Registry,
)
from services.ml_pipelines.mlflow_registry import TRAINING_RUN as RUN_TAG
from services.ml_pipelines.settings import MlPipelinesSettings
from tips.ml_pipelines.v1 import events_pb2, training_run_pb2

log = logging.getLogger(__name__)
R = store.training_runs
St = training_run_pb2.TrainingRunState
FINAL = (
    St.TRAINING_RUN_STATE_SUCCEEDED,
    St.TRAINING_RUN_STATE_FAILED,
    St.TRAINING_RUN_STATE_CANCELLED,
)
PARAMS = {f.name for f in dataclasses.fields(bandit.PolicyParams)}
Spawn = Callable[[Coroutine[Any, Any, None]], None]


class Cancelled(Exception):
    """The run was asked to stop."""


def parse_params(params: Mapping[str, str]) -> dict[str, float]:
    """Hyper-parameters by name; unknown names and bad values are named in the error."""
    out: dict[str, float] = {}
    problems = []
    for key in sorted(params):
        field = f"training_run.params[{key}]"
        if key not in PARAMS:
            problems.append((field, f"unknown parameter; known: {', '.join(sorted(PARAMS))}"))
            continue
        try:
            value = float(params[key])
        except ValueError:
            problems.append((field, "must be a number"))
            continue
        if key == "epsilon" and not 0.0 <= value < 1.0:
            problems.append((field, "must be in [0, 1)"))
        elif key == "arm_optimism" and not value >= 0.0:
            problems.append((field, "must not be negative"))
        elif key not in ("epsilon", "arm_optimism") and not value > 0.0:
            problems.append((field, "must be positive"))
        else:
            out[key] = value
    if problems:
        raise InvalidArgument(problems)
    return out


def run_proto(row: Any) -> training_run_pb2.TrainingRun:
    out = training_run_pb2.TrainingRun(
        name=domain.TRAINING_RUN.format(row.run_id),
        model=domain.model_name(row.model_id),
        algorithm=row.algorithm,
        params={k: repr(v) for k, v in (row.params or {}).items()},
        data_window=domain.interval(row.window_start, row.window_end),
        state=row.state,
        progress_fraction=row.progress,
        metrics={k: float(v) for k, v in (row.metrics or {}).items()},
        model_version=domain.version_name(row.model_id, row.model_version)
        if row.model_version
        else "",
        create_time=optional_timestamp(row.create_time),
        start_time=optional_timestamp(row.start_time),
        end_time=optional_timestamp(row.end_time),
    )
    if row.error:
        out.error.ParseFromString(row.error)
    return out


class Trainer:
    def __init__(
        self, db: Database, settings: MlPipelinesSettings, registry: Registry, spawn: Spawn
    ) -> None:
        self.db = db
        self.settings = settings
        self.registry = registry
        self.spawn = spawn
        # One run trains at a time: the machines are small and runs are CPU-bound.
        self._slot = asyncio.Semaphore(1)

    # --- API -------------------------------------------------------------------------------

    async def create(
        self, run: training_run_pb2.TrainingRun, run_id: str
    ) -> training_run_pb2.TrainingRun:
        domain.check_job_id(run_id, "training_run_id")
        if not run.model:
            raise InvalidArgument([("training_run.model", "is required")])
        model = domain.parse_model(run.model, "training_run.model")
        if not run.HasField("data_window"):
            raise InvalidArgument([("training_run.data_window", "is required")])
        start, end = domain.parse_window(
            run.data_window, "training_run.data_window", datetime.now(UTC)
        )
        params = parse_params(run.params)
        algorithm = run.algorithm or (await self.registry.model(model)).algorithm
        if algorithm not in ALGORITHMS:
            raise InvalidArgument(
                [("training_run.algorithm", f"must be one of {sorted(ALGORITHMS)}")]
            )
        run_id = run_id or jobs.new_id()
        digest = jobs.content_hash(
            {"model": model, "algorithm": algorithm, "params": params, "start": start, "end": end}
        )
        values = {
            "run_id": run_id,
            "model_id": model,
            "algorithm": algorithm,
            "params": params,
            "window_start": start,
            "window_end": end,
            "state": St.TRAINING_RUN_STATE_QUEUED,
            "content_hash": digest,
        }
        async with self.db.transaction() as session:
            row, created = await jobs.insert_once(
                session, R, "run_id", values, domain.TRAINING_RUN.format(run_id)
            )
        if created:
            self.spawn(self.run(run_id))
        return run_proto(row)

    async def _row(self, session: Any, run_id: str) -> Any:
        row = (await session.execute(select(R).where(R.c.run_id == run_id))).first()
        if row is None:
            raise NotFound(domain.TRAINING_RUN.format(run_id), resource_type="tips.app/TrainingRun")
        return row

    async def get(self, name: str) -> training_run_pb2.TrainingRun:
        run_id = domain.TRAINING_RUN.parse_one(name)
        async with self.db.session() as session:
            return run_proto(await self._row(session, run_id))

    async def list(
        self,
        model: str | None,
        states: Sequence[int],
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[Any]:
        query = select(R)
        if model:
            query = query.where(R.c.model_id == model)
        if states:
            query = query.where(R.c.state.in_(list(states)))
        if after is not None:
            t, i = after
            query = query.where((R.c.create_time < t) | ((R.c.create_time == t) & (R.c.run_id < i)))
        async with self.db.session() as session:
            rows = await session.execute(
                query.order_by(R.c.create_time.desc(), R.c.run_id.desc()).limit(limit)
            )
            return list(rows)

    async def cancel(self, name: str) -> training_run_pb2.TrainingRun:
        run_id = domain.TRAINING_RUN.parse_one(name)
        async with self.db.transaction() as session:
            row = (
                await session.execute(select(R).where(R.c.run_id == run_id).with_for_update())
            ).first()
            if row is None:
                raise NotFound(name, resource_type="tips.app/TrainingRun")
            if row.state in FINAL:
                raise FailedPrecondition(
                    f"{name} already ended ({_state_name(row.state)})",
                    reason="RUN_ENDED",
                    metadata={"run": name},
                )
            if row.state == St.TRAINING_RUN_STATE_CANCELLING:
                return run_proto(row)
            updated = (
                await session.execute(
                    update(R)
                    .where(R.c.run_id == run_id)
                    .values(state=St.TRAINING_RUN_STATE_CANCELLING)
                    .returning(*R.c)
                )
            ).one()
        return run_proto(updated)

    async def resume(self) -> None:
        """Restarts runs a previous process left unfinished."""
        async with self.db.session() as session:
            rows = await session.execute(
                select(R.c.run_id).where(
                    R.c.state.in_(
                        [
                            St.TRAINING_RUN_STATE_QUEUED,
                            St.TRAINING_RUN_STATE_RUNNING,
                            St.TRAINING_RUN_STATE_CANCELLING,
                        ]
                    )
                )
            )
            for row in rows:
                self.spawn(self.run(row.run_id))

    # --- the job ---------------------------------------------------------------------------

    async def run(self, run_id: str) -> None:
        # A job outlives the request that created it: no inherited deadline or caller.
        with deadline_in(None), acting_as(None):
            await self._run(run_id)

    async def _run(self, run_id: str) -> None:
        async with self._slot:
            try:
                await self._train(run_id)
            except Cancelled:
                await self._finish(run_id, St.TRAINING_RUN_STATE_CANCELLED)
            except asyncio.CancelledError:
                raise  # shutdown: the run resumes at the next start
            except Exception as exc:
                if not isinstance(exc, DomainError):
                    log.exception("training run failed", extra={"run": run_id})
                await self._finish(
                    run_id, St.TRAINING_RUN_STATE_FAILED, error=jobs.error_status(exc)
                )

    async def _state(self, run_id: str) -> int:
        async with self.db.session() as session:
            return int(
                (await session.execute(select(R.c.state).where(R.c.run_id == run_id))).scalar_one()
            )

    async def _progress(self, run_id: str, progress: float, metrics: dict[str, float]) -> None:
        async with self.db.transaction() as session:
            await session.execute(
                update(R).where(R.c.run_id == run_id).values(progress=progress, metrics=metrics)
            )
        log.info("training run progress", extra={"run": run_id, "progress": round(progress, 3)})

    async def _train(self, run_id: str) -> None:
        async with self.db.transaction() as session:
            row = (
                await session.execute(select(R).where(R.c.run_id == run_id).with_for_update())
            ).one()
            if row.state in FINAL:
                return
            if row.state == St.TRAINING_RUN_STATE_CANCELLING:
                raise Cancelled
            mlflow_run = await self._start_mlflow_run(row)
            await session.execute(
                update(R)
                .where(R.c.run_id == run_id)
                .values(
                    state=St.TRAINING_RUN_STATE_RUNNING,
                    start_time=datetime.now(UTC),
                    progress=0.0,
                    mlflow_run_id=mlflow_run,
                )
            )
            rows = await logged.load_rows(
                session,
                row.window_start,
                row.window_end,
                self.settings.ml_pipelines_max_logged_rows,
            )
        log.info("training run started", extra={"run": run_id, "decisions": len(rows)})
        book = await asyncio.to_thread(
            offline.TipBook.from_catalog_file, self.settings.ml_pipelines_catalog_path
        )
        # Every rank of a multi-tip answer: training weighs no row by its propensity
        # (offline.train_step), so a later pick's conditional one does not matter.
        rounds = await asyncio.to_thread(offline.rounds_of, rows, book)
        if not rounds:
            raise FailedPrecondition(
                "no joined decisions (decision + reward) of known catalog tips in the data window",
                reason="NO_TRAINING_DATA",
            )
        policy = bandit.Policy(bandit.PolicyParams(**row.params))
        chunk = self.settings.ml_pipelines_train_chunk
        squared, seen = 0.0, 0
        for begin in range(0, len(rounds), chunk):
            if await self._state(run_id) == St.TRAINING_RUN_STATE_CANCELLING:
                raise Cancelled
            part = rounds[begin : begin + chunk]
            sq, n = await asyncio.to_thread(offline.train_step, policy, part)
            squared, seen = squared + sq, seen + n
            metrics = _metrics(rounds[:seen], squared, seen)
            progress = 0.95 * seen / len(rounds)
            await self._progress(run_id, progress, metrics)
            await self.registry.call(
                self.registry.mlflow.log_metrics, mlflow_run, metrics | {"progress": progress}, seen
            )
        if await self._state(run_id) == St.TRAINING_RUN_STATE_CANCELLING:
            raise Cancelled
        final = _metrics(rounds, squared, seen)
        await self._register(run_id, row.model_id, policy, final, mlflow_run)
        await self.registry.call(
            self.registry.mlflow.log_metrics, mlflow_run, final | {"progress": 1.0}, seen
        )
        await self.registry.call(self.registry.mlflow.end_run, mlflow_run, "FINISHED")

    async def _start_mlflow_run(self, row: Any) -> str:
        """A new MLflow run for this attempt; an earlier attempt's (a restart) is ended KILLED."""
        reg = self.registry
        if row.mlflow_run_id:
            await reg.call(reg.mlflow.end_run, row.mlflow_run_id, "KILLED")
        name = domain.TRAINING_RUN.format(row.run_id)
        params = {
            "algorithm": row.algorithm,
            "data_window_start": row.window_start.isoformat(),
            "data_window_end": row.window_end.isoformat(),
            "train_chunk": self.settings.ml_pipelines_train_chunk,
            **(row.params or {}),
        }
        return await reg.call(
            reg.mlflow.start_run, row.model_id, f"train {row.run_id}", params, {RUN_TAG: name}
        )

    async def _register(
        self,
        run_id: str,
        model: str,
        policy: bandit.Policy,
        metrics: dict[str, float],
        mlflow_run: str,
    ) -> None:
        reg = self.registry
        async with self.db.transaction() as session:
            # The run's row locked first: a cancel waits for this transaction, and
            # one that came before it stops the registration.
            state = (
                await session.execute(
                    select(R.c.state).where(R.c.run_id == run_id).with_for_update()
                )
            ).scalar_one()
            if state != St.TRAINING_RUN_STATE_RUNNING:
                raise Cancelled
            await reg.lock_model(session, model)
            version = await reg.next_version(model)
            path = await reg.call(repository.write_trained, policy, reg.repository, model, version)
            record = await reg.register(
                NewVersion(
                    model=model,
                    artifact=Path(path),
                    feature_schema_version=FEATURE_SCHEMA_VERSION,
                    description=f"trained by trainingRuns/{run_id}",
                    metrics=metrics,
                    training_run=domain.TRAINING_RUN.format(run_id),
                    in_place=version,
                ),
                mlflow_run,
            )
            try:
                now = datetime.now(UTC)
                await session.execute(
                    update(R)
                    .where(R.c.run_id == run_id)
                    .values(
                        state=St.TRAINING_RUN_STATE_SUCCEEDED,
                        progress=1.0,
                        metrics=metrics,
                        model_version=version,
                        end_time=now,
                    )
                )
                await self._event(session, run_id, model, St.TRAINING_RUN_STATE_SUCCEEDED, now,
                                  domain.version_name(model, version), metrics)  # fmt: skip
            except BaseException:
                await reg.call(reg.mlflow.delete, record)  # the run will not say it made it
                raise
        log.info("training run succeeded", extra={"run": run_id, "model_version": version})

    async def _finish(self, run_id: str, state: int, error: bytes | None = None) -> None:
        now = datetime.now(UTC)
        async with self.db.transaction() as session:
            row = (
                await session.execute(
                    update(R)
                    .where(R.c.run_id == run_id, R.c.state.not_in(list(FINAL)))
                    .values(state=state, error=error, end_time=now)
                    .returning(R.c.model_id, R.c.metrics, R.c.mlflow_run_id)
                )
            ).first()
            if row is None:
                return
            status = None if error is None else status_pb2.Status.FromString(error)
            await self._event(
                session, run_id, row.model_id, state, now, "", row.metrics or {}, status
            )
        if row.mlflow_run_id:
            ending = "KILLED" if state == St.TRAINING_RUN_STATE_CANCELLED else "FAILED"
            try:
                await self.registry.call(self.registry.mlflow.end_run, row.mlflow_run_id, ending)
            except Exception:  # the job's own state is final already; MLflow shows RUNNING
                log.exception("MLflow run not ended", extra={"run": run_id})
        log.info("training run ended", extra={"run": run_id, "state": _state_name(state)})

    async def _event(
        self, session: Any, run_id: str, model: str, state: int, now: datetime,
        version: str, metrics: Mapping[str, float], error: Any = None,
    ) -> None:  # fmt: skip
        event = events_pb2.TrainingRunCompleted(
            event_id=f"training-run-completed:{run_id}",
            occur_time=optional_timestamp(now),
            training_run=domain.TRAINING_RUN.format(run_id),
            model=domain.model_name(model),
            state=state,  # type: ignore[arg-type]
            model_version=version,
            metrics={k: float(v) for k, v in metrics.items()},
            error=error,
        )
        await enqueue(session, store.outbox, event, msg_id=event.event_id)


def _state_name(state: int) -> str:
    return St.Name(state)  # type: ignore[arg-type]


def _metrics(rounds: Sequence[offline.Round], squared: float, seen: int) -> dict[str, float]:
    rewards = [r.reward for r in rounds]
    return {
        "decisions": float(seen),
        "mean_reward": sum(rewards) / len(rewards) if rewards else 0.0,
        # Progressive validation: each row predicted before it was learned from.
        "train_loss": squared / seen if seen else 0.0,
    }

"""Feature backfills: replay the signal log into per-user daily feature rows.

A backfill streams the events service's ``ReplayAllSignals`` (over gRPC,
``kernel.clients.channel(settings, "events")``) for its time window and users,
resuming after a broken stream from the last chunk's token, accumulates
``daily.DailyFeatures`` and overwrites the rows of ``user_daily_features``
(so running one again is safe). Progress: the replay's position in the
window (to 0.9), then the rows written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert

from kernel.clients import channel
from kernel.db import Database
from kernel.deadline import deadline_in
from kernel.errors import DomainError, InvalidArgument, NotFound
from kernel.identity import acting_as, parse_user
from kernel.timestamps import optional_timestamp, to_datetime
from services.ml_pipelines import daily, domain, jobs, logged, store
from services.ml_pipelines.core.training import Spawn
from services.ml_pipelines.settings import MlPipelinesSettings
from tips.events.v1 import events_service_pb2 as ev
from tips.events.v1 import events_service_pb2_grpc as ev_grpc
from tips.ml_pipelines.v1 import feature_backfill_pb2

log = logging.getLogger(__name__)
B, F = store.feature_backfills, store.user_daily_features
St = feature_backfill_pb2.FeatureBackfillState
FINAL = (St.FEATURE_BACKFILL_STATE_SUCCEEDED, St.FEATURE_BACKFILL_STATE_FAILED)
WRITE_BATCH = 500
# A whole replay may take long; it is a batch job, not a request.
REPLAY_TIMEOUT = 3600.0
RETRIES = 5


def backfill_proto(row: Any) -> feature_backfill_pb2.FeatureBackfill:
    out = feature_backfill_pb2.FeatureBackfill(
        name=domain.FEATURE_BACKFILL.format(row.backfill_id),
        feature_schema_version=row.feature_schema_version,
        feature_names=row.feature_names,
        users=row.users,
        time_window=domain.interval(row.window_start, row.window_end),
        state=row.state,
        progress_fraction=row.progress,
        processed_user_count=row.processed_user_count,
        written_row_count=row.written_row_count,
        create_time=optional_timestamp(row.create_time),
        start_time=optional_timestamp(row.start_time),
        end_time=optional_timestamp(row.end_time),
    )
    if row.error:
        out.error.ParseFromString(row.error)
    return out


class Backfiller:
    def __init__(self, db: Database, settings: MlPipelinesSettings, spawn: Spawn) -> None:
        self.db = db
        self.settings = settings
        self.spawn = spawn
        self._slot = asyncio.Semaphore(1)

    async def create(
        self, b: feature_backfill_pb2.FeatureBackfill, backfill_id: str
    ) -> feature_backfill_pb2.FeatureBackfill:
        domain.check_job_id(backfill_id, "feature_backfill_id")
        field = "feature_backfill"
        schema = daily.SCHEMAS.get(b.feature_schema_version)
        if schema is None:
            raise InvalidArgument(
                [(f"{field}.feature_schema_version", f"must be one of {sorted(daily.SCHEMAS)}")]
            )
        problems = [
            (f"{field}.feature_names[{i}]", f"not a feature of {b.feature_schema_version}")
            for i, n in enumerate(b.feature_names)
            if n not in schema
        ]
        for i, user in enumerate(b.users):
            try:
                parse_user(user, f"{field}.users[{i}]")
            except InvalidArgument as exc:
                problems.extend(exc.violations)
        if problems:
            raise InvalidArgument(problems)
        if not b.HasField("time_window"):
            raise InvalidArgument([(f"{field}.time_window", "is required")])
        start, end = domain.parse_window(b.time_window, f"{field}.time_window", datetime.now(UTC))
        feature_names = sorted(set(b.feature_names)) or list(schema)
        users = sorted(set(b.users))
        backfill_id = backfill_id or jobs.new_id()
        digest = jobs.content_hash(
            {"schema": b.feature_schema_version, "names": feature_names, "users": users,
             "start": start, "end": end}
        )  # fmt: skip
        values = {
            "backfill_id": backfill_id,
            "feature_schema_version": b.feature_schema_version,
            "feature_names": feature_names,
            "users": users,
            "window_start": start,
            "window_end": end,
            "state": St.FEATURE_BACKFILL_STATE_QUEUED,
            "content_hash": digest,
        }
        async with self.db.transaction() as session:
            row, created = await jobs.insert_once(
                session, B, "backfill_id", values, domain.FEATURE_BACKFILL.format(backfill_id)
            )
        if created:
            self.spawn(self.run(backfill_id))
        return backfill_proto(row)

    async def _row(self, session: Any, backfill_id: str) -> Any:
        row = (await session.execute(select(B).where(B.c.backfill_id == backfill_id))).first()
        if row is None:
            raise NotFound(
                domain.FEATURE_BACKFILL.format(backfill_id),
                resource_type="tips.app/FeatureBackfill",
            )
        return row

    async def get(self, name: str) -> feature_backfill_pb2.FeatureBackfill:
        backfill_id = domain.FEATURE_BACKFILL.parse_one(name)
        async with self.db.session() as session:
            return backfill_proto(await self._row(session, backfill_id))

    async def list(
        self, states: Sequence[int], after: tuple[datetime, str] | None, limit: int
    ) -> list[Any]:
        query = select(B)
        if states:
            query = query.where(B.c.state.in_(list(states)))
        if after is not None:
            t, i = after
            query = query.where(
                (B.c.create_time < t) | ((B.c.create_time == t) & (B.c.backfill_id < i))
            )
        async with self.db.session() as session:
            rows = await session.execute(
                query.order_by(B.c.create_time.desc(), B.c.backfill_id.desc()).limit(limit)
            )
            return list(rows)

    async def resume(self) -> None:
        async with self.db.session() as session:
            rows = await session.execute(
                select(B.c.backfill_id).where(B.c.state.not_in(list(FINAL)))
            )
            for row in rows:
                self.spawn(self.run(row.backfill_id))

    # --- the job ---------------------------------------------------------------------------

    async def run(self, backfill_id: str) -> None:
        # A job outlives the request that created it: no inherited deadline or caller.
        with deadline_in(None), acting_as(None):
            async with self._slot:
                try:
                    await self._run(backfill_id)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if not isinstance(exc, DomainError):
                        log.exception("feature backfill failed", extra={"backfill": backfill_id})
                    await self._set(
                        backfill_id, state=St.FEATURE_BACKFILL_STATE_FAILED,
                        error=jobs.error_status(exc), end_time=datetime.now(UTC),
                    )  # fmt: skip

    async def _set(self, backfill_id: str, **values: Any) -> None:
        async with self.db.transaction() as session:
            await session.execute(update(B).where(B.c.backfill_id == backfill_id).values(**values))

    async def _run(self, backfill_id: str) -> None:
        async with self.db.session() as session:
            row = await self._row(session, backfill_id)
        if row.state in FINAL:
            return
        await self._set(
            backfill_id, state=St.FEATURE_BACKFILL_STATE_RUNNING, start_time=datetime.now(UTC),
            progress=0.0, error=None,
        )  # fmt: skip
        acc = daily.DailyFeatures()
        await self._replay(row, acc)
        rows = acc.rows(row.feature_names)
        async with self.db.session() as session:
            # The log may still hold signals of users erased here since.
            erased = {u for u in {r[0] for r in rows} if await logged.is_erased(session, u)}
        rows = [r for r in rows if r[0] not in erased]
        users: set[str] = set()
        written = 0
        for begin in range(0, len(rows), WRITE_BATCH):
            part = rows[begin : begin + WRITE_BATCH]
            async with self.db.transaction() as session:
                schema = row.feature_schema_version
                stmt = insert(F).values(
                    [
                        {"user_id": u, "day": d, "feature_schema_version": schema, "features": v}
                        for u, d, v in part
                    ]
                )
                await session.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[F.c.user_id, F.c.day, F.c.feature_schema_version],
                        set_={"features": stmt.excluded.features, "update_time": datetime.now(UTC)},
                    )
                )
            written += len(part)
            users.update(u for u, _, _ in part)
            await self._set(
                backfill_id, progress=0.9 + 0.1 * written / len(rows),
                processed_user_count=len(users), written_row_count=written,
            )  # fmt: skip
        await self._set(
            backfill_id, state=St.FEATURE_BACKFILL_STATE_SUCCEEDED, progress=1.0,
            processed_user_count=len(users), written_row_count=written, end_time=datetime.now(UTC),
        )  # fmt: skip
        log.info("feature backfill succeeded", extra={"backfill": backfill_id, "rows": written})

    async def _replay(self, row: Any, acc: daily.DailyFeatures) -> None:
        stub = ev_grpc.EventsInternalServiceStub(channel(self.settings, "events"))
        span = (row.window_end - row.window_start).total_seconds()
        token, failures = "", 0
        while True:
            request = ev.ReplayAllSignalsRequest(
                time_range=domain.interval(row.window_start, row.window_end),
                time_field=ev.SIGNAL_TIME_FIELD_START_TIME,
                users=row.users,
                chunk_size=self.settings.ml_pipelines_backfill_chunk,
                resume_token=token,
            )
            try:
                async for chunk in stub.ReplayAllSignals(request, timeout=REPLAY_TIMEOUT):
                    acc.add(chunk.signals)
                    token = chunk.resume_token or token
                    if chunk.signals:
                        at = to_datetime(chunk.signals[-1].start_time)
                        done = (at - row.window_start).total_seconds() / span
                        await self._set(row.backfill_id, progress=0.9 * min(max(done, 0.0), 1.0))
                return
            except grpc.aio.AioRpcError as exc:
                # A broken stream resumes after the last chunk; other errors end the job.
                if exc.code() != grpc.StatusCode.UNAVAILABLE or failures >= RETRIES:
                    raise RuntimeError(
                        f"events ReplayAllSignals failed: {exc.code().name}: {exc.details()}"
                    ) from None
                failures += 1
                await asyncio.sleep(0.5 * 2**failures)

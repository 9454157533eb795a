"""One sync run of one connection: consent, tokens, fetch, ingest, cursor, status.

The caller has leased the connection (``store.claim_due`` / ``claim_one``).
Pages are ingested in order and each page's cursor and counters commit right
after the events service accepted its signals, so a crash or an error loses
nothing and moves the cursor only as far as what was ingested (re-fetched
records are duplicates the events service drops). The run ends by writing the
status, the next run time (interval with jitter, exponential backoff after
failures, the provider's ``Retry-After`` when rate limited) and a
``SyncCompleted`` event, and by releasing the lease.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import httpx
from google.rpc import code_pb2  # type: ignore[import-untyped]

from kernel.db import Database
from kernel.ids import random_id
from kernel.names import user_name
from kernel.outbox import enqueue
from kernel.timestamps import timestamp
from services.integrations import domain, oauth, store
from services.integrations.connectors.base import Connector, FetchContext
from services.integrations.connectors.http import (
    GrantRevoked,
    ProviderApi,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
)
from services.integrations.connectors.registry import get as get_connector
from services.integrations.consent import ConsentGate, ConsentUnknown
from services.integrations.ingest import EventsSink
from services.integrations.settings import IntegrationsSettings
from services.integrations.vault import KeyRing
from tips.integrations.v1 import connection_pb2, events_pb2

log = logging.getLogger(__name__)
S = connection_pb2.ConnectionState
O = connection_pb2.SyncOutcome  # noqa: E741


class ConsentMissing(Exception):
    pass


@dataclass
class RunState:
    """Counters of one run, and how it ended."""

    sync_id: str
    trigger: int
    start: datetime
    records: int = 0
    skipped: int = 0
    accepted: int = 0
    rejected: int = 0
    pages: int = 0
    error_code: int | None = None
    error_message: str = ""
    retry_after: float | None = None
    revoked: bool = False
    consent_blocked: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class SyncEngine:
    def __init__(
        self,
        db: Database,
        settings: IntegrationsSettings,
        ring: KeyRing,
        consent: ConsentGate,
        sink: EventsSink,
        http: httpx.AsyncClient,
    ) -> None:
        self.db = db
        self.settings = settings
        self.ring = ring
        self.consent = consent
        self.sink = sink
        self.http = http

    async def run(
        self,
        row: Any,
        *,
        trigger: int | None = None,
        sync_id: str | None = None,
        full_resync: bool | None = None,
    ) -> tuple[connection_pb2.SyncResult, connection_pb2.Connection]:
        """Run a sync of the leased connection ``row``; always releases the lease."""
        connector = get_connector(row.provider)
        run = RunState(
            sync_id=sync_id or row.pending_sync_id or random_id(),
            trigger=trigger or row.pending_trigger or connection_pb2.SYNC_TRIGGER_SCHEDULED,
            start=datetime.now(UTC),
        )
        resync = full_resync if full_resync is not None else row.pending_full_resync
        cursor: dict[str, Any] = dict(row.cursor or {})
        if resync:
            cursor = connector.resync_cursor(cursor) if connector else {}
        async with self.db.transaction() as session:
            await store.update_connection(
                session, row.user_id, row.connection_id,
                last_attempt_time=run.start, pending_sync_id=None, pending_trigger=None,
                pending_full_resync=False,
            )  # fmt: skip
        try:
            if connector is None:
                raise ProviderError(f"no connector for provider {row.provider!r}")
            await self._fetch_all(row, connector, cursor, run)
        except ConsentMissing:
            run.consent_blocked = True
            run.error_code = code_pb2.FAILED_PRECONDITION
            run.error_message = f"consent {row.consent_purpose!r} is not granted"
        except ConsentUnknown as exc:
            run.error_code, run.error_message = code_pb2.UNAVAILABLE, str(exc)
        except RateLimited as exc:
            run.error_code, run.error_message = code_pb2.RESOURCE_EXHAUSTED, str(exc)
            run.retry_after = exc.retry_after
        except GrantRevoked as exc:
            run.error_code, run.error_message, run.revoked = (
                code_pb2.UNAUTHENTICATED,
                str(exc),
                True,
            )
        except ProviderUnavailable as exc:
            run.error_code, run.error_message = code_pb2.UNAVAILABLE, str(exc)
        except ProviderError as exc:
            run.error_code, run.error_message = code_pb2.FAILED_PRECONDITION, str(exc)
        except grpc.aio.AioRpcError as exc:
            # The events service refused or is down: retry later from the same cursor.
            run.error_code = code_pb2.UNAVAILABLE
            run.error_message = f"events service: {exc.code().name}"
        except Exception as exc:
            log.exception(
                "sync failed", extra={"connection": self._name(row), "sync_id": run.sync_id}
            )
            run.error_code, run.error_message = (
                code_pb2.INTERNAL,
                f"internal error: {type(exc).__name__}",
            )
        return await self._finish(row, connector, run)

    def _name(self, row: Any) -> str:
        return domain.connection_name(row.user_id, row.connection_id)

    async def _check_consent(self, row: Any) -> None:
        if not await self.consent.allows(row.user_id, row.consent_purpose):
            raise ConsentMissing()

    async def _fetch_all(
        self, row: Any, connector: Connector, cursor: dict[str, Any], run: RunState
    ) -> None:
        await self._check_consent(row)  # no fetch without consent
        tokens = await self._tokens(row, connector)
        client = self.settings.provider_client(connector.id)

        async def refresh() -> str:
            nonlocal tokens
            tokens = await self._refresh(row, connector, tokens)
            return tokens.access_token

        api = ProviderApi(
            self.http,
            client.api_base_url or connector.endpoints.api_base_url,
            tokens.access_token,
            refresh,
        )
        ctx = FetchContext(
            connection=self._name(row),
            now=run.start,
            page_size=self.settings.integrations_page_size,
            backfill=timedelta(days=self.settings.integrations_backfill_days),
        )
        async for page in connector.fetch(api, cursor, ctx):
            await self._check_consent(row)  # a revocation stops the run before any ingest
            counts = await self.sink.send(row.user_id, page.signals, run.sync_id)
            run.pages += 1
            run.records += page.records
            run.skipped += page.skipped
            run.accepted += counts.accepted
            run.rejected += counts.rejected
            async with self.db.transaction() as session:
                await store.update_connection(
                    session, row.user_id, row.connection_id,
                    cursor=page.cursor,
                    records_synced=store.c.records_synced + page.records,
                    signals_emitted=store.c.signals_emitted + counts.accepted,
                )  # fmt: skip
            if page.skipped:
                log.info(
                    "malformed provider records skipped",
                    extra={"connection": ctx.connection, "skipped": page.skipped},
                )
            if run.pages >= self.settings.integrations_max_pages_per_run:
                break  # the rest comes next run, from the committed cursor

    async def _tokens(self, row: Any, connector: Connector) -> oauth.TokenSet:
        async with self.db.session() as session:
            stored = await store.get_tokens(session, row.user_id, row.connection_id)
        if stored is None:
            raise GrantRevoked("no tokens are stored for this connection")
        tokens = oauth.TokenSet.from_bytes(
            self.ring.open(self._name(row), store.envelope_of(stored))
        )
        margin = timedelta(seconds=self.settings.integrations_token_refresh_margin_seconds)
        if tokens.expire_time is not None and tokens.expire_time - margin <= datetime.now(UTC):
            tokens = await self._refresh(row, connector, tokens)
        return tokens

    async def _refresh(
        self, row: Any, connector: Connector, tokens: oauth.TokenSet
    ) -> oauth.TokenSet:
        client = self.settings.provider_client(connector.id)
        fresh = await oauth.refresh(
            self.http,
            client.token_url or connector.endpoints.token_url,
            client_id=client.client_id,
            client_secret=client.client_secret.get_secret_value(),
            refresh_token=tokens.refresh_token,
        )
        envelope = self.ring.seal(self._name(row), fresh.to_bytes())
        async with self.db.transaction() as session:
            await store.put_tokens(
                session, row.user_id, row.connection_id, envelope, fresh.expire_time
            )
        return fresh

    async def _finish(
        self, row: Any, connector: Connector | None, run: RunState
    ) -> tuple[connection_pb2.SyncResult, connection_pb2.Connection]:
        end = datetime.now(UTC)
        failed = run.error_code is not None
        outcome = O.SYNC_OUTCOME_SUCCEEDED
        if failed:
            outcome = O.SYNC_OUTCOME_PARTIAL if run.pages else O.SYNC_OUTCOME_FAILED
        async with self.db.transaction() as session:
            current = await store.get_connection(session, row.user_id, row.connection_id, lock=True)
            if current is None:  # deleted while syncing: nothing to record
                result = self._result(row, run, outcome, end)
                return result, domain.to_connection(row)
            values: dict[str, Any] = {"lease_until": None}
            change: int | None = None
            interval = domain.interval_of(current, connector) if connector else timedelta(hours=1)
            if not failed:
                values |= {
                    "last_success_time": end,
                    "consecutive_failures": 0,
                    "next_run_time": domain.next_scheduled(
                        end, interval, self.settings.integrations_sync_jitter
                    ),
                }
                if current.state == S.CONNECTION_STATE_ERROR:
                    values["state"] = S.CONNECTION_STATE_ACTIVE
            else:
                values |= {
                    "last_error_code": run.error_code,
                    "last_error_message": run.error_message,
                    "last_error_time": end,
                }
                if run.revoked:
                    values |= {"state": S.CONNECTION_STATE_REVOKED, "next_run_time": None}
                elif run.consent_blocked:
                    # Not the provider's fault: no backoff; the consent grant reschedules.
                    values["next_run_time"] = domain.next_scheduled(
                        end, interval, self.settings.integrations_sync_jitter
                    )
                else:
                    failures = current.consecutive_failures + 1
                    delay = domain.backoff(failures, self.settings)
                    if run.retry_after is not None:
                        delay = timedelta(seconds=run.retry_after)
                    values |= {"consecutive_failures": failures, "next_run_time": end + delay}
                    if (
                        failures >= self.settings.integrations_error_after_failures
                        and current.state == S.CONNECTION_STATE_ACTIVE
                    ):
                        values["state"] = S.CONNECTION_STATE_ERROR
            updated = await store.update_connection(
                session, row.user_id, row.connection_id, **values
            )
            assert updated is not None
            connection = domain.to_connection(updated)
            if run.revoked and current.state != S.CONNECTION_STATE_REVOKED:
                change = events_pb2.CONNECTION_CHANGE_REVOKED
            elif values.get("state") == S.CONNECTION_STATE_ERROR:
                change = events_pb2.CONNECTION_CHANGE_ERROR
            elif values.get("state") == S.CONNECTION_STATE_ACTIVE:
                change = events_pb2.CONNECTION_CHANGE_CONNECTED
            if change is not None:
                await publish_change(session, row.user_id, change, connection)
            result = self._result(row, run, outcome, end)
            event = events_pb2.SyncCompleted(
                event_id=random_id(),
                occur_time=timestamp(end),
                user=user_name(row.user_id),
                result=result,
                provider=f"providers/{row.provider}",
            )
            await enqueue(session, store.outbox, event, msg_id=event.event_id)
        log.info(
            "sync finished",
            extra={
                "connection": connection.name, "sync_id": run.sync_id,
                "outcome": O.Name(outcome), "records": run.records, "skipped": run.skipped,
                "accepted": run.accepted, "error": run.error_message or None,
            },
        )  # fmt: skip
        return result, connection

    def _result(
        self, row: Any, run: RunState, outcome: int, end: datetime
    ) -> connection_pb2.SyncResult:
        result = connection_pb2.SyncResult(
            sync_id=run.sync_id,
            connection=self._name(row),
            trigger=run.trigger,  # type: ignore[arg-type]
            outcome=outcome,  # type: ignore[arg-type]
            start_time=timestamp(run.start),
            end_time=timestamp(end),
            records_fetched=run.records,
            signals_emitted=run.accepted,
            signals_rejected=run.rejected,
        )
        if run.error_code is not None:
            result.error.code = run.error_code
            result.error.message = run.error_message
            result.error.error_time.CopyFrom(timestamp(end))
        return result


async def publish_change(
    session: Any,
    user_id: str,
    change: int,
    connection: connection_pb2.Connection,
    *,
    keep_signals: bool = False,
) -> None:
    """Enqueue a ``ConnectionChanged`` in the caller's transaction."""
    event = events_pb2.ConnectionChanged(
        event_id=random_id(),
        occur_time=timestamp(datetime.now(UTC)),
        user=user_name(user_id),
        change=change,  # type: ignore[arg-type]
        connection=connection,
        keep_signals=keep_signals,
    )
    await enqueue(session, store.outbox, event, msg_id=event.event_id)

"""Connection use cases: connect (OAuth with PKCE), read, update, delete, sync now.

Each writes its rows and its ``ConnectionChanged`` (outbox) in one
transaction. Calls to the provider (token exchange, revocation) happen
outside any transaction. The caller's ownership is checked by the servicer.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
from google.rpc import code_pb2, status_pb2  # type: ignore[import-untyped]

from kernel import paging
from kernel.db import Database
from kernel.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from kernel.ids import random_id
from kernel.timestamps import datetime_of, timestamp
from services.integrations import domain, oauth, store
from services.integrations.connectors.base import Connector
from services.integrations.connectors.http import ProviderError
from services.integrations.connectors.registry import all_connectors
from services.integrations.connectors.registry import get as get_connector
from services.integrations.consent import ConsentGate, ConsentUnknown
from services.integrations.core.sync import SyncEngine, publish_change
from services.integrations.rewrap import rewrap_all
from services.integrations.settings import IntegrationsSettings
from services.integrations.vault import KeyRing, UnknownKey, VaultError
from tips.integrations.v1 import connection_pb2, events_pb2
from tips.integrations.v1 import integrations_service_pb2 as pb

S = connection_pb2.ConnectionState
CONNECTION_TYPE = "tips.app/Connection"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SYNCABLE = (S.CONNECTION_STATE_ACTIVE, S.CONNECTION_STATE_ERROR)


def _with_query(uri: str, **params: str) -> str:
    parts = urlsplit(uri)
    query = [*parse_qsl(parts.query), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


def connector_of(provider_name: str, field: str) -> Connector:
    """The connector ``providers/{provider}`` names; NotFound when there is none."""
    provider_id = domain.parse_provider_name(provider_name, field)
    connector = get_connector(provider_id)
    if connector is None:
        raise NotFound(provider_name, resource_type="tips.app/Provider")
    return connector


class Connections:
    """The use cases of the integrations API; one per process, shared by both servicers."""

    def __init__(
        self,
        db: Database,
        settings: IntegrationsSettings,
        ring: KeyRing,
        http: httpx.AsyncClient,
        consent: ConsentGate,
        engine: SyncEngine,
        wake: Any,
    ) -> None:
        self.db = db
        self.settings = settings
        self.ring = ring
        self.http = http
        self.consent = consent
        self.engine = engine
        self.wake = wake

    # --- providers ------------------------------------------------------------------------

    def providers(self, page_size: int, page_token: str) -> pb.ListProvidersResponse:
        size = paging.page_size(page_size, default=50, maximum=100)
        after = paging.decode(page_token, "providers")
        ids = [pid for pid in all_connectors() if after is None or pid > after.id]
        page = ids[:size]
        providers = [domain.to_provider(all_connectors()[pid], self.settings) for pid in page]
        token = ""
        if len(ids) > size:
            token = paging.encode(paging.Cursor(_EPOCH, page[-1]), "providers")
        return pb.ListProvidersResponse(providers=providers, next_page_token=token)

    # --- connecting -----------------------------------------------------------------------

    async def start(
        self, user_id: str, request: pb.StartConnectionRequest
    ) -> pb.StartConnectionResponse:
        """A pending connection and the provider's authorization URL (state + PKCE)."""
        if not request.connection.provider:
            raise InvalidArgument([("connection.provider", "is required")])
        connector = connector_of(request.connection.provider, "connection.provider")
        interval = domain.check_sync_interval(
            request.connection.sync_interval, connector, "connection.sync_interval"
        )
        connection_id = domain.check_connection_id(request.connection_id)
        return_uri = request.return_uri or self.settings.integrations_return_uris[0]
        if return_uri not in self.settings.integrations_return_uris:
            raise InvalidArgument([("return_uri", "is not on the service's allow-list")])
        client = self.settings.provider_client(connector.id)
        if not client.client_id:
            raise FailedPrecondition(
                f"{connector.display_name} is not configured in this deployment",
                reason="PROVIDER_UNAVAILABLE",
                metadata={"provider": f"providers/{connector.id}"},
            )
        await self._require_consent(user_id, connector.consent_purpose)
        state, verifier = oauth.new_state(), oauth.new_verifier()
        hashed = domain.state_hash(state)
        ttl = timedelta(seconds=self.settings.integrations_state_ttl_seconds)
        expire = datetime.now(UTC) + ttl
        sealed = self.ring.seal(f"oauth-state/{hashed}", verifier.encode())
        async with self.db.transaction() as session:
            await store.delete_expired_states(session)
            row = await store.get_connection(session, user_id, connection_id, lock=True)
            if row is not None and row.provider != connector.id:
                raise FailedPrecondition(
                    f"connection {connection_id!r} belongs to another provider",
                    reason="PROVIDER_MISMATCH",
                )
            if row is None:
                await store.insert_connection(
                    session,
                    user_id=user_id,
                    connection_id=connection_id,
                    provider=connector.id,
                    display_name=request.connection.display_name or connector.display_name,
                    state=S.CONNECTION_STATE_PENDING_AUTHORIZATION,
                    paused=request.connection.paused,
                    sync_interval_seconds=interval,
                    consent_purpose=connector.consent_purpose,
                )
            await store.put_state(
                session,
                state_hash=hashed,
                user_id=user_id,
                connection_id=connection_id,
                key_id=sealed.key_id,
                wrapped_key=sealed.wrapped_key,
                ciphertext=sealed.ciphertext,
                return_uri=return_uri,
                expire_time=expire,
            )
            row = await store.get_connection(session, user_id, connection_id)
        assert row is not None
        uri = oauth.authorization_uri(
            client.authorize_url or connector.endpoints.authorize_url,
            client_id=client.client_id,
            redirect_uri=self.settings.integrations_redirect_uri,
            scopes=connector.scopes,
            state=state,
            verifier=verifier,
            extra=connector.authorize_params,
        )
        return pb.StartConnectionResponse(
            connection=domain.to_connection(row),
            authorization_uri=uri,
            expire_time=timestamp(expire),
        )

    async def complete(
        self, request: pb.CompleteConnectionRequest
    ) -> pb.CompleteConnectionResponse:
        """The provider's redirect: exchange the code, seal the tokens, schedule a first sync.

        The one-time ``state`` identifies the user: this call carries no caller.
        """
        if not request.state:
            raise InvalidArgument([("state", "is required")])
        if not request.code and not request.error:
            raise InvalidArgument([("code", "is required unless error is set")])
        hashed = domain.state_hash(request.state)
        async with self.db.transaction() as session:
            started = await store.take_state(session, hashed)
        if started is None or started.expire_time < datetime.now(UTC):
            raise FailedPrecondition(
                "the authorization expired or was already used; start again",
                reason="STATE_INVALID",
            )
        user_id, connection_id = started.user_id, started.connection_id
        name = domain.connection_name(user_id, connection_id)
        row = await self.connection(name, user_id, connection_id)
        if request.error:
            result = "denied" if request.error == "access_denied" else "error"
            error = status_pb2.Status(
                code=code_pb2.PERMISSION_DENIED if result == "denied" else code_pb2.UNKNOWN,
                message=f"the provider answered {request.error!r}",
            )
            return pb.CompleteConnectionResponse(
                connection=domain.to_connection(row),
                redirect_uri=_with_query(started.return_uri, connection=name, result=result),
                error=error,
            )
        connector = get_connector(row.provider)
        assert connector is not None
        client = self.settings.provider_client(connector.id)
        verifier = self.ring.open(f"oauth-state/{hashed}", store.envelope_of(started)).decode()
        try:
            tokens = await oauth.exchange_code(
                self.http,
                client.token_url or connector.endpoints.token_url,
                client_id=client.client_id,
                client_secret=client.client_secret.get_secret_value(),
                code=request.code,
                verifier=verifier,
                redirect_uri=self.settings.integrations_redirect_uri,
            )
        except ProviderError as exc:
            return pb.CompleteConnectionResponse(
                connection=domain.to_connection(row),
                redirect_uri=_with_query(started.return_uri, connection=name, result="error"),
                error=status_pb2.Status(code=code_pb2.UNAVAILABLE, message=str(exc)),
            )
        scopes = (tokens.scope or request.scope or " ".join(connector.scopes)).split()
        sealed = self.ring.seal(name, tokens.to_bytes())
        now = datetime.now(UTC)
        async with self.db.transaction() as session:
            await store.put_tokens(session, user_id, connection_id, sealed, tokens.expire_time)
            updated = await store.update_connection(
                session, user_id, connection_id,
                state=S.CONNECTION_STATE_ACTIVE, authorize_time=now, granted_scopes=scopes,
                consecutive_failures=0, next_run_time=now,
                pending_trigger=connection_pb2.SYNC_TRIGGER_INITIAL,
            )  # fmt: skip
            assert updated is not None
            connection = domain.to_connection(updated)
            await publish_change(
                session, user_id, events_pb2.CONNECTION_CHANGE_CONNECTED, connection
            )
        self.wake()
        return pb.CompleteConnectionResponse(
            connection=connection,
            redirect_uri=_with_query(started.return_uri, connection=name, result="ok"),
        )

    # --- connections ----------------------------------------------------------------------

    async def connection(self, name: str, user_id: str, connection_id: str) -> Any:
        """The connection's row; NotFound (naming ``name``) when there is none."""
        async with self.db.session() as session:
            row = await store.get_connection(session, user_id, connection_id)
        if row is None:
            raise NotFound(name, resource_type=CONNECTION_TYPE)
        return row

    async def list_page(
        self, user_id: str, request: pb.ListConnectionsRequest
    ) -> pb.ListConnectionsResponse:
        size = paging.page_size(request.page_size, default=50, maximum=100)
        provider = (
            domain.parse_provider_name(request.provider, "provider") if request.provider else None
        )
        states = sorted(set(request.states))
        fingerprint = f"{request.parent}|{provider}|{states}"
        after = paging.decode(request.page_token, fingerprint)
        async with self.db.session() as session:
            rows = await store.list_connections(
                session, user_id, provider=provider, states=states,
                after=(after.time, after.id) if after else None, limit=size + 1,
            )  # fmt: skip
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1]
            token = paging.encode(paging.Cursor(last.create_time, last.connection_id), fingerprint)
        return pb.ListConnectionsResponse(
            connections=[domain.to_connection(r) for r in rows], next_page_token=token
        )

    async def update(
        self, user_id: str, connection_id: str, request: pb.UpdateConnectionRequest
    ) -> connection_pb2.Connection:
        """The fields the mask names; pausing and resuming announce themselves."""
        name = request.connection.name
        row = await self.connection(name, user_id, connection_id)
        paths = domain.check_update_mask(list(request.update_mask.paths))
        connector = get_connector(row.provider)
        assert connector is not None
        values: dict[str, Any] = {}
        if "display_name" in paths:
            values["display_name"] = request.connection.display_name or connector.display_name
        if "sync_interval" in paths:
            values["sync_interval_seconds"] = domain.check_sync_interval(
                request.connection.sync_interval, connector, "connection.sync_interval"
            )
        change = events_pb2.CONNECTION_CHANGE_UPDATED
        if "paused" in paths and request.connection.paused != row.paused:
            values["paused"] = request.connection.paused
            if request.connection.paused:
                change = events_pb2.CONNECTION_CHANGE_PAUSED
            else:
                change = events_pb2.CONNECTION_CHANGE_RESUMED
                values["next_run_time"] = datetime.now(UTC)
        async with self.db.transaction() as session:
            updated = await store.update_connection(session, user_id, connection_id, **values)
            if updated is None:
                raise NotFound(name, resource_type=CONNECTION_TYPE)
            connection = domain.to_connection(updated)
            await publish_change(session, user_id, change, connection)
        if change == events_pb2.CONNECTION_CHANGE_RESUMED:
            self.wake()
        return connection

    async def delete(
        self, name: str, user_id: str, connection_id: str, *, keep_signals: bool
    ) -> None:
        """Revoke at the provider (best effort), then delete rows and tokens, announce it."""
        row = await self.connection(name, user_id, connection_id)
        async with self.db.session() as session:
            stored = await store.get_tokens(session, user_id, connection_id)
        await self._revoke_at_provider(row, stored)
        async with self.db.transaction() as session:
            last = domain.to_connection(row)
            await store.delete_connection(session, user_id, connection_id)
            await publish_change(
                session, user_id, events_pb2.CONNECTION_CHANGE_DELETED, last,
                keep_signals=keep_signals,
            )  # fmt: skip

    async def _revoke_at_provider(self, row: Any, stored: Any) -> None:
        connector = get_connector(row.provider)
        if stored is None or connector is None:
            return
        client = self.settings.provider_client(connector.id)
        revoke_url = client.revoke_url or connector.endpoints.revoke_url
        if not revoke_url:
            return
        try:
            name = domain.connection_name(row.user_id, row.connection_id)
            tokens = oauth.TokenSet.from_bytes(self.ring.open(name, store.envelope_of(stored)))
        except VaultError:
            return
        await oauth.revoke(self.http, revoke_url, tokens.refresh_token or tokens.access_token)

    async def sync_now(
        self, name: str, user_id: str, connection_id: str, *, full_resync: bool
    ) -> pb.SyncConnectionResponse:
        """Make the connection due now (at most once per ``min_sync_interval``)."""
        row = await self.connection(name, user_id, connection_id)
        if domain.output_state(row) not in _SYNCABLE:
            raise FailedPrecondition(f"{name} is not active", reason="CONNECTION_NOT_ACTIVE")
        connector = get_connector(row.provider)
        assert connector is not None
        now = datetime.now(UTC)
        if row.last_attempt_time is not None:
            wait = row.last_attempt_time + connector.min_sync_interval - now
            if wait > timedelta(0):
                raise ResourceExhausted(
                    f"synced less than {connector.min_sync_interval} ago", retry_after=wait
                )
        sync_id = row.pending_sync_id or random_id()
        async with self.db.transaction() as session:
            updated = await store.update_connection(
                session, user_id, connection_id,
                next_run_time=now, pending_sync_id=sync_id,
                pending_trigger=connection_pb2.SYNC_TRIGGER_MANUAL,
                pending_full_resync=row.pending_full_resync or full_resync,
            )  # fmt: skip
        assert updated is not None
        self.wake()
        return pb.SyncConnectionResponse(connection=domain.to_connection(updated), sync_id=sync_id)

    async def rewrap(self, target_key_id: str, validate_only: bool) -> pb.RewrapTokensResponse:
        """Re-seal every record's data key under ``target_key_id`` (default: the current KEK)."""
        target = target_key_id or self.ring.current
        try:
            result = await rewrap_all(self.db, self.ring, target, validate_only=validate_only)
        except UnknownKey:
            raise InvalidArgument([("target_key_id", "is not in the key ring")]) from None
        response = pb.RewrapTokensResponse(
            target_key_id=result.target_key_id,
            rewrapped_count=result.rewrapped,
            unchanged_count=result.unchanged,
        )
        for connection, message, not_found in result.failures:
            code = code_pb2.NOT_FOUND if not_found else code_pb2.DATA_LOSS
            response.failures.add(
                connection=connection, error=status_pb2.Status(code=code, message=message)
            )
        return response

    async def _require_consent(self, user_id: str, purpose: str) -> None:
        try:
            allowed = await self.consent.allows(user_id, purpose)
        except ConsentUnknown:
            raise Unavailable(
                "cannot check consent right now", retry_after=timedelta(seconds=5)
            ) from None
        if not allowed:
            raise FailedPrecondition(
                f"connecting needs the {purpose!r} consent",
                reason="CONSENT_REQUIRED",
                metadata={"consent_purpose": purpose},
            )

    # --- internal: the scheduler's API ----------------------------------------------------

    async def due(self, request: pb.ListDueConnectionsRequest) -> pb.ListDueConnectionsResponse:
        size = paging.page_size(request.page_size, default=100, maximum=1000)
        due = datetime_of(request, "due_time") or datetime.now(UTC)
        provider = (
            domain.parse_provider_name(request.provider, "provider") if request.provider else None
        )
        fingerprint = f"due|{provider}|{due.isoformat()}"
        after = paging.decode(request.page_token, fingerprint)
        async with self.db.session() as session:
            rows = await store.list_due(session, due, provider, after, size + 1)
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1]
            key = f"{last.user_id}/{last.connection_id}"
            token = paging.encode(paging.Cursor(last.next_run_time, key), fingerprint)
        return pb.ListDueConnectionsResponse(
            connections=[domain.to_connection(r) for r in rows], next_page_token=token
        )

    async def run_sync(self, request: pb.RunConnectionSyncRequest) -> pb.RunConnectionSyncResponse:
        """Run one sync now, in this call (leased like the scheduler's)."""
        user_id, connection_id = domain.parse_connection_name(request.name)
        async with self.db.transaction() as session:
            exists = await store.get_connection(session, user_id, connection_id)
            if exists is None:
                raise NotFound(request.name, resource_type=CONNECTION_TYPE)
            if domain.output_state(exists) not in _SYNCABLE:
                raise FailedPrecondition(
                    f"{request.name} is not active", reason="CONNECTION_NOT_ACTIVE"
                )
            row = await store.claim_one(
                session, user_id, connection_id, self.settings.integrations_sync_lease_seconds
            )
        if row is None:
            raise Aborted(f"a sync of {request.name} is already running", reason="SYNC_RUNNING")
        result, connection = await self.engine.run(
            row,
            trigger=request.trigger or None,
            sync_id=request.sync_id or None,
            full_resync=request.full_resync or None,
        )
        return pb.RunConnectionSyncResponse(result=result, connection=connection)

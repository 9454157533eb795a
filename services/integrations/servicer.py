"""gRPC servicers of the integrations service: parse, check the caller, act, answer."""

from __future__ import annotations

import uuid
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
from kernel.identity import require_owner, require_scope, require_user_parent
from kernel.timestamps import timestamp
from services.integrations import domain, oauth, store
from services.integrations.connectors.base import Connector
from services.integrations.connectors.http import ProviderError
from services.integrations.connectors.registry import all_connectors
from services.integrations.connectors.registry import get as get_connector
from services.integrations.consent import ConsentGate, ConsentUnknown
from services.integrations.rewrap import rewrap_all
from services.integrations.settings import IntegrationsSettings
from services.integrations.sync import SyncEngine, publish_change
from services.integrations.vault import KeyRing, UnknownKey, VaultError
from tips.integrations.v1 import connection_pb2, events_pb2
from tips.integrations.v1 import integrations_service_pb2 as pb
from tips.integrations.v1 import integrations_service_pb2_grpc as pb_grpc

S = connection_pb2.ConnectionState
CONNECTION_TYPE = "tips.app/Connection"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _with_query(uri: str, **params: str) -> str:
    parts = urlsplit(uri)
    query = [*parse_qsl(parts.query), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


class Wiring:
    """What both servicers share."""

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


def _connector(provider_name: str, field: str) -> Connector:
    provider_id = domain.parse_provider_name(provider_name, field)
    connector = get_connector(provider_id)
    if connector is None:
        raise NotFound(provider_name, resource_type="tips.app/Provider")
    return connector


async def _owned(w: Wiring, name: str, field: str = "name") -> tuple[str, str, Any]:
    user_id, connection_id = domain.parse_connection_name(name, field)
    require_owner(name, field)
    async with w.db.session() as session:
        row = await store.get_connection(session, user_id, connection_id)
    if row is None:
        raise NotFound(name, resource_type=CONNECTION_TYPE)
    return user_id, connection_id, row


class IntegrationsServicer(pb_grpc.IntegrationsServiceServicer):
    """``tips.integrations.v1.IntegrationsService``."""

    def __init__(self, wiring: Wiring) -> None:
        self.w = wiring

    # --- providers -------------------------------------------------------------------

    async def ListProviders(
        self, request: pb.ListProvidersRequest, context: Any
    ) -> pb.ListProvidersResponse:
        size = paging.page_size(request.page_size, default=50, maximum=100)
        after = paging.decode(request.page_token, "providers")
        ids = [pid for pid in all_connectors() if after is None or pid > after.id]
        page = ids[:size]
        providers = [domain.to_provider(all_connectors()[pid], self.w.settings) for pid in page]
        token = ""
        if len(ids) > size:
            token = paging.encode(paging.Cursor(_EPOCH, page[-1]), "providers")
        return pb.ListProvidersResponse(providers=providers, next_page_token=token)

    async def GetProvider(
        self, request: pb.GetProviderRequest, context: Any
    ) -> pb.GetProviderResponse:
        connector = _connector(request.name, "name")
        return pb.GetProviderResponse(provider=domain.to_provider(connector, self.w.settings))

    # --- connecting ------------------------------------------------------------------

    async def StartConnection(
        self, request: pb.StartConnectionRequest, context: Any
    ) -> pb.StartConnectionResponse:
        w = self.w
        user_id = require_user_parent(request.parent)
        if not request.connection.provider:
            raise InvalidArgument([("connection.provider", "is required")])
        connector = _connector(request.connection.provider, "connection.provider")
        interval = domain.check_sync_interval(
            request.connection.sync_interval, connector, "connection.sync_interval"
        )
        connection_id = domain.check_connection_id(request.connection_id)
        return_uri = request.return_uri or w.settings.integrations_return_uris[0]
        if return_uri not in w.settings.integrations_return_uris:
            raise InvalidArgument([("return_uri", "is not on the service's allow-list")])
        client = w.settings.provider_client(connector.id)
        if not client.client_id:
            raise FailedPrecondition(
                f"{connector.display_name} is not configured in this deployment",
                reason="PROVIDER_UNAVAILABLE",
                metadata={"provider": f"providers/{connector.id}"},
            )
        await _require_consent(w.consent, user_id, connector.consent_purpose)
        state, verifier = oauth.new_state(), oauth.new_verifier()
        hashed = domain.state_hash(state)
        expire = datetime.now(UTC) + timedelta(seconds=w.settings.integrations_state_ttl_seconds)
        sealed = w.ring.seal(f"oauth-state/{hashed}", verifier.encode())
        async with w.db.transaction() as session:
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
            redirect_uri=w.settings.integrations_redirect_uri,
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

    async def CompleteConnection(
        self, request: pb.CompleteConnectionRequest, context: Any
    ) -> pb.CompleteConnectionResponse:
        w = self.w
        if not request.state:
            raise InvalidArgument([("state", "is required")])
        if not request.code and not request.error:
            raise InvalidArgument([("code", "is required unless error is set")])
        hashed = domain.state_hash(request.state)
        async with w.db.transaction() as session:
            started = await store.take_state(session, hashed)
        if started is None or started.expire_time < datetime.now(UTC):
            raise FailedPrecondition(
                "the authorization expired or was already used; start again",
                reason="STATE_INVALID",
            )
        user_id, connection_id = started.user_id, started.connection_id
        name = domain.connection_name(user_id, connection_id)
        async with w.db.session() as session:
            row = await store.get_connection(session, user_id, connection_id)
        if row is None:
            raise NotFound(name, resource_type=CONNECTION_TYPE)
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
        client = w.settings.provider_client(connector.id)
        verifier = w.ring.open(f"oauth-state/{hashed}", store.envelope_of(started)).decode()
        try:
            tokens = await oauth.exchange_code(
                w.http,
                client.token_url or connector.endpoints.token_url,
                client_id=client.client_id,
                client_secret=client.client_secret.get_secret_value(),
                code=request.code,
                verifier=verifier,
                redirect_uri=w.settings.integrations_redirect_uri,
            )
        except ProviderError as exc:
            return pb.CompleteConnectionResponse(
                connection=domain.to_connection(row),
                redirect_uri=_with_query(started.return_uri, connection=name, result="error"),
                error=status_pb2.Status(code=code_pb2.UNAVAILABLE, message=str(exc)),
            )
        scopes = (tokens.scope or request.scope or " ".join(connector.scopes)).split()
        sealed = w.ring.seal(name, tokens.to_bytes())
        now = datetime.now(UTC)
        async with w.db.transaction() as session:
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
        w.wake()
        return pb.CompleteConnectionResponse(
            connection=connection,
            redirect_uri=_with_query(started.return_uri, connection=name, result="ok"),
        )

    # --- connections -----------------------------------------------------------------

    async def ListConnections(
        self, request: pb.ListConnectionsRequest, context: Any
    ) -> pb.ListConnectionsResponse:
        user_id = require_user_parent(request.parent)
        size = paging.page_size(request.page_size, default=50, maximum=100)
        provider = (
            domain.parse_provider_name(request.provider, "provider") if request.provider else None
        )
        states = sorted(set(request.states))
        fingerprint = f"{request.parent}|{provider}|{states}"
        after = paging.decode(request.page_token, fingerprint)
        async with self.w.db.session() as session:
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

    async def GetConnection(
        self, request: pb.GetConnectionRequest, context: Any
    ) -> pb.GetConnectionResponse:
        _, _, row = await _owned(self.w, request.name)
        return pb.GetConnectionResponse(connection=domain.to_connection(row))

    async def UpdateConnection(
        self, request: pb.UpdateConnectionRequest, context: Any
    ) -> pb.UpdateConnectionResponse:
        w = self.w
        user_id, connection_id, row = await _owned(w, request.connection.name, "connection.name")
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
        async with w.db.transaction() as session:
            updated = await store.update_connection(session, user_id, connection_id, **values)
            if updated is None:
                raise NotFound(request.connection.name, resource_type=CONNECTION_TYPE)
            connection = domain.to_connection(updated)
            await publish_change(session, user_id, change, connection)
        if change == events_pb2.CONNECTION_CHANGE_RESUMED:
            w.wake()
        return pb.UpdateConnectionResponse(connection=connection)

    async def DeleteConnection(
        self, request: pb.DeleteConnectionRequest, context: Any
    ) -> pb.DeleteConnectionResponse:
        w = self.w
        user_id, connection_id, row = await _owned(w, request.name)
        async with w.db.session() as session:
            stored = await store.get_tokens(session, user_id, connection_id)
        await self._revoke_at_provider(row, stored)
        async with w.db.transaction() as session:
            last = domain.to_connection(row)
            await store.delete_connection(session, user_id, connection_id)
            await publish_change(
                session, user_id, events_pb2.CONNECTION_CHANGE_DELETED, last,
                keep_signals=request.keep_signals,
            )  # fmt: skip
        return pb.DeleteConnectionResponse()

    async def _revoke_at_provider(self, row: Any, stored: Any) -> None:
        connector = get_connector(row.provider)
        if stored is None or connector is None:
            return
        client = self.w.settings.provider_client(connector.id)
        revoke_url = client.revoke_url or connector.endpoints.revoke_url
        if not revoke_url:
            return
        try:
            name = domain.connection_name(row.user_id, row.connection_id)
            tokens = oauth.TokenSet.from_bytes(self.w.ring.open(name, store.envelope_of(stored)))
        except VaultError:
            return
        await oauth.revoke(self.w.http, revoke_url, tokens.refresh_token or tokens.access_token)

    async def SyncConnection(
        self, request: pb.SyncConnectionRequest, context: Any
    ) -> pb.SyncConnectionResponse:
        w = self.w
        user_id, connection_id, row = await _owned(w, request.name)
        if domain.output_state(row) not in (S.CONNECTION_STATE_ACTIVE, S.CONNECTION_STATE_ERROR):
            raise FailedPrecondition(
                f"{request.name} is not active", reason="CONNECTION_NOT_ACTIVE"
            )
        connector = get_connector(row.provider)
        assert connector is not None
        now = datetime.now(UTC)
        if row.last_attempt_time is not None:
            wait = row.last_attempt_time + connector.min_sync_interval - now
            if wait > timedelta(0):
                raise ResourceExhausted(
                    f"synced less than {connector.min_sync_interval} ago", retry_after=wait
                )
        sync_id = row.pending_sync_id or uuid.uuid4().hex
        async with w.db.transaction() as session:
            updated = await store.update_connection(
                session, user_id, connection_id,
                next_run_time=now, pending_sync_id=sync_id,
                pending_trigger=connection_pb2.SYNC_TRIGGER_MANUAL,
                pending_full_resync=row.pending_full_resync or request.full_resync,
            )  # fmt: skip
        assert updated is not None
        w.wake()
        return pb.SyncConnectionResponse(connection=domain.to_connection(updated), sync_id=sync_id)

    async def RewrapTokens(
        self, request: pb.RewrapTokensRequest, context: Any
    ) -> pb.RewrapTokensResponse:
        require_scope("admin")
        target = request.target_key_id or self.w.ring.current
        try:
            result = await rewrap_all(
                self.w.db, self.w.ring, target, validate_only=request.validate_only
            )
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


async def _require_consent(gate: ConsentGate, user_id: str, purpose: str) -> None:
    try:
        allowed = await gate.allows(user_id, purpose)
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


class IntegrationsInternalServicer(pb_grpc.IntegrationsInternalServiceServicer):
    """``tips.integrations.v1.IntegrationsInternalService``."""

    def __init__(self, wiring: Wiring) -> None:
        self.w = wiring

    async def ListDueConnections(
        self, request: pb.ListDueConnectionsRequest, context: Any
    ) -> pb.ListDueConnectionsResponse:
        size = paging.page_size(request.page_size, default=100, maximum=1000)
        due = (
            request.due_time.ToDatetime(UTC) if request.HasField("due_time") else datetime.now(UTC)
        )
        provider = (
            domain.parse_provider_name(request.provider, "provider") if request.provider else None
        )
        fingerprint = f"due|{provider}|{due.isoformat()}"
        after = paging.decode(request.page_token, fingerprint)
        async with self.w.db.session() as session:
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

    async def RunConnectionSync(
        self, request: pb.RunConnectionSyncRequest, context: Any
    ) -> pb.RunConnectionSyncResponse:
        user_id, connection_id = domain.parse_connection_name(request.name)
        async with self.w.db.transaction() as session:
            exists = await store.get_connection(session, user_id, connection_id)
            if exists is None:
                raise NotFound(request.name, resource_type=CONNECTION_TYPE)
            if domain.output_state(exists) not in (
                S.CONNECTION_STATE_ACTIVE,
                S.CONNECTION_STATE_ERROR,
            ):
                raise FailedPrecondition(
                    f"{request.name} is not active", reason="CONNECTION_NOT_ACTIVE"
                )
            row = await store.claim_one(
                session, user_id, connection_id, self.w.settings.integrations_sync_lease_seconds
            )
        if row is None:
            raise Aborted(f"a sync of {request.name} is already running", reason="SYNC_RUNNING")
        result, connection = await self.w.engine.run(
            row,
            trigger=request.trigger or None,
            sync_id=request.sync_id or None,
            full_resync=request.full_resync or None,
        )
        return pb.RunConnectionSyncResponse(result=result, connection=connection)

"""gRPC servicers of the integrations service: parse, check the caller, call ``core``, answer."""

from __future__ import annotations

from typing import Any

from kernel.identity import require_owner, require_scope, require_user_parent
from services.integrations import domain
from services.integrations.core.connections import Connections, connector_of
from tips.integrations.v1 import integrations_service_pb2 as pb
from tips.integrations.v1 import integrations_service_pb2_grpc as pb_grpc


def _owned(name: str, field: str = "name") -> tuple[str, str]:
    """(user, connection) of ``name``, which the caller must own."""
    user_id, connection_id = domain.parse_connection_name(name, field)
    require_owner(name, field)
    return user_id, connection_id


class IntegrationsServicer(pb_grpc.IntegrationsServiceServicer):
    """``tips.integrations.v1.IntegrationsService``."""

    def __init__(self, connections: Connections) -> None:
        self.connections = connections

    async def ListProviders(
        self, request: pb.ListProvidersRequest, context: Any
    ) -> pb.ListProvidersResponse:
        return self.connections.providers(request.page_size, request.page_token)

    async def GetProvider(
        self, request: pb.GetProviderRequest, context: Any
    ) -> pb.GetProviderResponse:
        connector = connector_of(request.name, "name")
        settings = self.connections.settings
        return pb.GetProviderResponse(provider=domain.to_provider(connector, settings))

    async def StartConnection(
        self, request: pb.StartConnectionRequest, context: Any
    ) -> pb.StartConnectionResponse:
        user_id = require_user_parent(request.parent)
        return await self.connections.start(user_id, request)

    async def CompleteConnection(
        self, request: pb.CompleteConnectionRequest, context: Any
    ) -> pb.CompleteConnectionResponse:
        # Public: the one-time state names the user (the provider's redirect has no token).
        return await self.connections.complete(request)

    async def ListConnections(
        self, request: pb.ListConnectionsRequest, context: Any
    ) -> pb.ListConnectionsResponse:
        user_id = require_user_parent(request.parent)
        return await self.connections.list_page(user_id, request)

    async def GetConnection(
        self, request: pb.GetConnectionRequest, context: Any
    ) -> pb.GetConnectionResponse:
        row = await self.connections.connection(request.name, *_owned(request.name))
        return pb.GetConnectionResponse(connection=domain.to_connection(row))

    async def UpdateConnection(
        self, request: pb.UpdateConnectionRequest, context: Any
    ) -> pb.UpdateConnectionResponse:
        user_id, connection_id = _owned(request.connection.name, "connection.name")
        connection = await self.connections.update(user_id, connection_id, request)
        return pb.UpdateConnectionResponse(connection=connection)

    async def DeleteConnection(
        self, request: pb.DeleteConnectionRequest, context: Any
    ) -> pb.DeleteConnectionResponse:
        user_id, connection_id = _owned(request.name)
        await self.connections.delete(
            request.name, user_id, connection_id, keep_signals=request.keep_signals
        )
        return pb.DeleteConnectionResponse()

    async def SyncConnection(
        self, request: pb.SyncConnectionRequest, context: Any
    ) -> pb.SyncConnectionResponse:
        user_id, connection_id = _owned(request.name)
        return await self.connections.sync_now(
            request.name, user_id, connection_id, full_resync=request.full_resync
        )

    async def RewrapTokens(
        self, request: pb.RewrapTokensRequest, context: Any
    ) -> pb.RewrapTokensResponse:
        require_scope("admin")
        return await self.connections.rewrap(request.target_key_id, request.validate_only)


class IntegrationsInternalServicer(pb_grpc.IntegrationsInternalServiceServicer):
    """``tips.integrations.v1.IntegrationsInternalService``."""

    def __init__(self, connections: Connections) -> None:
        self.connections = connections

    async def ListDueConnections(
        self, request: pb.ListDueConnectionsRequest, context: Any
    ) -> pb.ListDueConnectionsResponse:
        return await self.connections.due(request)

    async def RunConnectionSync(
        self, request: pb.RunConnectionSyncRequest, context: Any
    ) -> pb.RunConnectionSyncResponse:
        return await self.connections.run_sync(request)

"""A stand-in ProfileInternalService over real gRPC, answering from a dict.

Only for integrations tests: it lets them grant and revoke a user's consent
purposes without running the profile service and its own dependencies.
"""

from __future__ import annotations

from typing import Any

import grpc

from tips.profile.v1 import (
    consent_pb2,
    profile_service_pb2,
    profile_service_pb2_grpc,
    user_context_pb2,
)


class ProfileStandIn(profile_service_pb2_grpc.ProfileInternalServiceServicer):
    def __init__(self) -> None:
        self.granted: dict[str, set[str]] = {}
        self.server: grpc.aio.Server | None = None
        self.address = ""

    def grant(self, user_id: str, purpose: str) -> None:
        self.granted.setdefault(user_id, set()).add(purpose)

    def revoke(self, user_id: str, purpose: str) -> None:
        self.granted.setdefault(user_id, set()).discard(purpose)

    async def GetUserContext(self, request: Any, context: Any) -> Any:
        user_id = request.user.removeprefix("users/")
        purposes = [
            consent_pb2.ConsentPurpose.Value("CONSENT_PURPOSE_" + p.upper().replace("-", "_"))
            for p in sorted(self.granted.get(user_id, set()))
        ]
        return profile_service_pb2.GetUserContextResponse(
            user_context=user_context_pb2.UserContext(user=request.user, granted_purposes=purposes)
        )

    async def start(self) -> str:
        self.server = grpc.aio.server()
        profile_service_pb2_grpc.add_ProfileInternalServiceServicer_to_server(self, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.address = f"127.0.0.1:{port}"
        return self.address

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)

"""gRPC servicers of the auth service: check the request and the caller, call the core."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from google.protobuf.json_format import ParseDict

from kernel import paging
from kernel.errors import InvalidArgument, Unauthenticated
from kernel.identity import parse_user
from kernel.names import user_name
from kernel.timestamps import optional_timestamp, timedelta_of
from services.auth import domain
from services.auth.core import AuthCore, Device, Issued
from services.auth.ratelimit import FailureLimiter
from tips.auth.v1 import auth_service_pb2 as pb
from tips.auth.v1 import auth_service_pb2_grpc as pb_grpc
from tips.auth.v1 import jwk_pb2, session_pb2

T = TypeVar("T")


def _metadata(context: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(context.invocation_metadata() or ())


def _user_agent(context: Any) -> str:
    """The app's User-Agent, which names the device in the user's session list: as
    the edge passes it on (grpc-gateway's name), else a direct gRPC caller's own."""
    values = dict(_metadata(context))
    agent = values.get("grpcgateway-user-agent") or values.get("user-agent") or ""
    return str(agent)[: domain.MAX_USER_AGENT]


def _fill(response: Any, issued: Issued) -> None:
    response.access_token = issued.access.token
    response.access_token_expire_time.CopyFrom(optional_timestamp(issued.access.expire_time))
    response.refresh_token = issued.refresh_token
    response.refresh_token_expire_time.CopyFrom(optional_timestamp(issued.refresh_expire_time))
    response.session.CopyFrom(issued.session)
    response.user = user_name(issued.user_id)


def _jwks(keys: list[dict[str, str]]) -> list[jwk_pb2.Jwk]:
    return [ParseDict(k, jwk_pb2.Jwk(), ignore_unknown_fields=True) for k in keys]


class AuthServicer(pb_grpc.AuthServiceServicer):
    """``tips.auth.v1.AuthService``."""

    def __init__(self, core: AuthCore, limiter: FailureLimiter) -> None:
        self.core = core
        self.limiter = limiter

    async def _limited(self, context: Any, call: Callable[[], Awaitable[T]]) -> T:
        """Run a credential check under the failed sign-in limit of the client."""
        client = domain.client_address(_metadata(context), context.peer() or "")
        await self.limiter.check(client)
        try:
            return await call()
        except Unauthenticated:
            await self.limiter.record_failure(client)
            raise

    async def SignIn(self, request: pb.SignInRequest, context: Any) -> pb.SignInResponse:
        domain.check_sign_in_request(request.provider, request.id_token, request.nonce)
        domain.check_device(request.device_name, request.platform)
        if len(request.display_name) > 200:
            raise InvalidArgument([("display_name", "must be at most 200 characters")])
        device = Device(request.device_name, request.platform, _user_agent(context))
        issued = await self._limited(
            context,
            lambda: self.core.sign_in(
                request.provider, request.id_token, request.nonce, device, request.display_name
            ),
        )
        response = pb.SignInResponse(user_created=issued.user_created)
        _fill(response, issued)
        return response

    async def StartWebSignIn(
        self, request: pb.StartWebSignInRequest, context: Any
    ) -> pb.StartWebSignInResponse:
        domain.check_device(request.device_name, 0)
        device = Device(request.device_name, session_pb2.PLATFORM_WEB, _user_agent(context))
        uri, state, expire = await self.core.start_web(
            request.provider, request.redirect_uri, request.login_hint, device
        )
        return pb.StartWebSignInResponse(
            authorization_uri=uri, state=state, expire_time=optional_timestamp(expire)
        )

    async def CompleteWebSignIn(
        self, request: pb.CompleteWebSignInRequest, context: Any
    ) -> pb.CompleteWebSignInResponse:
        issued, redirect_uri = await self._limited(
            context,
            lambda: self.core.complete_web(
                request.code, request.state, request.error, request.error_description
            ),
        )
        response = pb.CompleteWebSignInResponse(
            user_created=issued.user_created, redirect_uri=redirect_uri
        )
        _fill(response, issued)
        return response

    async def RefreshSession(
        self, request: pb.RefreshSessionRequest, context: Any
    ) -> pb.RefreshSessionResponse:
        issued = await self._limited(context, lambda: self.core.refresh(request.refresh_token))
        response = pb.RefreshSessionResponse()
        _fill(response, issued)
        return response

    async def SignOut(self, request: pb.SignOutRequest, context: Any) -> pb.SignOutResponse:
        await self.core.sign_out(request.refresh_token)
        return pb.SignOutResponse()

    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: Any
    ) -> pb.ListSessionsResponse:
        caller = domain.resolve_parent(request.parent)
        size = paging.page_size(request.page_size, default=50, maximum=100)
        sessions, token = await self.core.list_sessions(
            caller.user, size, request.page_token, request.show_inactive, caller.session
        )
        return pb.ListSessionsResponse(sessions=sessions, next_page_token=token)

    async def GetSession(
        self, request: pb.GetSessionRequest, context: Any
    ) -> pb.GetSessionResponse:
        caller, session_id = domain.resolve_child(request.name, domain.SESSION)
        found = await self.core.get_session(caller.user, session_id, request.name, caller.session)
        return pb.GetSessionResponse(session=found)

    async def RevokeSession(
        self, request: pb.RevokeSessionRequest, context: Any
    ) -> pb.RevokeSessionResponse:
        caller, session_id = domain.resolve_child(request.name, domain.SESSION)
        found = await self.core.revoke_session(
            caller.user, session_id, request.name, caller.session
        )
        return pb.RevokeSessionResponse(session=found)

    async def ListIdentities(
        self, request: pb.ListIdentitiesRequest, context: Any
    ) -> pb.ListIdentitiesResponse:
        caller = domain.resolve_parent(request.parent)
        # A user has a handful of identities: one page holds them all.
        paging.page_size(request.page_size, default=50, maximum=100)
        if request.page_token:
            raise InvalidArgument([("page_token", "is not a token of this listing")])
        return pb.ListIdentitiesResponse(identities=await self.core.list_identities(caller.user))

    async def GetIdentity(
        self, request: pb.GetIdentityRequest, context: Any
    ) -> pb.GetIdentityResponse:
        caller, identity_id = domain.resolve_child(request.name, domain.IDENTITY)
        found = await self.core.get_identity(caller.user, identity_id, request.name)
        return pb.GetIdentityResponse(identity=found)

    async def LinkIdentity(
        self, request: pb.LinkIdentityRequest, context: Any
    ) -> pb.LinkIdentityResponse:
        caller = domain.resolve_parent(request.parent)
        domain.check_sign_in_request(request.provider, request.id_token, request.nonce)
        identity = await self._limited(
            context,
            lambda: self.core.link_identity(
                caller.user, request.provider, request.id_token, request.nonce
            ),
        )
        return pb.LinkIdentityResponse(identity=identity)

    async def GetJwks(self, request: pb.GetJwksRequest, context: Any) -> pb.GetJwksResponse:
        return pb.GetJwksResponse(keys=_jwks(await self.core.keys.jwks()))


class AuthInternalServicer(pb_grpc.AuthInternalServiceServicer):
    """``tips.auth.v1.AuthInternalService``: mesh peers only, never routed by the gateway."""

    def __init__(self, core: AuthCore) -> None:
        self.core = core

    async def RevokeUserSessions(
        self, request: pb.RevokeUserSessionsRequest, context: Any
    ) -> pb.RevokeUserSessionsResponse:
        user_id = parse_user(request.user, "user")
        if request.user != user_name(user_id):
            raise InvalidArgument([("user", f"must be users/{{user}}, got {request.user!r}")])
        reason = request.reason or session_pb2.SESSION_REVOKE_REASON_ADMIN
        count = await self.core.revoke_user_sessions(user_id, reason)
        return pb.RevokeUserSessionsResponse(revoked_session_count=count)

    async def IntrospectToken(
        self, request: pb.IntrospectTokenRequest, context: Any
    ) -> pb.IntrospectTokenResponse:
        if not request.access_token:
            raise InvalidArgument([("access_token", "is required")])
        found = await self.core.introspect(request.access_token)
        if found is None:
            return pb.IntrospectTokenResponse(active=False)
        return pb.IntrospectTokenResponse(
            active=True,
            user=user_name(found.user_id),
            session=domain.session_name(found.user_id, found.session_id),
            scopes=found.scopes,
            expire_time=optional_timestamp(found.expire_time),
        )

    async def RotateSigningKeys(
        self, request: pb.RotateSigningKeysRequest, context: Any
    ) -> pb.RotateSigningKeysResponse:
        grace = None
        period = timedelta_of(request, "previous_key_grace_period")
        if period is not None:
            grace = period.total_seconds()
            if grace < 0:
                raise InvalidArgument([("previous_key_grace_period", "must not be negative")])
        kid = await self.core.rotate_keys(grace)
        keys = _jwks(await self.core.keys.jwks())
        current = next(k for k in keys if k.kid == kid)
        return pb.RotateSigningKeysResponse(signing_key=current, keys=keys)

"""gRPC servicers of the profile service: parse, check the caller, delegate, answer."""

from __future__ import annotations

from typing import Any

from kernel.errors import InvalidArgument, NotFound
from kernel.identity import require_owner, require_scope
from services.profile import domain, names
from services.profile.core.consents import Consents
from services.profile.core.profiles import Profiles, SignUp
from services.profile.readmodel import UserContexts
from tips.profile.v1 import profile_service_pb2 as pb
from tips.profile.v1 import profile_service_pb2_grpc as pb_grpc

BATCH_MAX = 1000


class ProfileServicer(pb_grpc.ProfileServiceServicer):
    """``tips.profile.v1.ProfileService``: the user's own profile, consents and erasure."""

    def __init__(self, profiles: Profiles, consents: Consents) -> None:
        self.profiles = profiles
        self.consents = consents

    async def GetProfile(
        self, request: pb.GetProfileRequest, context: Any
    ) -> pb.GetProfileResponse:
        user_id = names.parse_profile_name(request.name)
        require_owner(request.name)
        return pb.GetProfileResponse(profile=await self.profiles.get(user_id))

    async def UpdateProfile(
        self, request: pb.UpdateProfileRequest, context: Any
    ) -> pb.UpdateProfileResponse:
        if not request.HasField("profile"):
            raise InvalidArgument([("profile", "is required")])
        user_id = names.parse_profile_name(request.profile.name, "profile.name")
        require_owner(request.profile.name, "profile.name")
        mask = request.update_mask if request.HasField("update_mask") else None
        profile = await self.profiles.update(user_id, request.profile, mask)
        return pb.UpdateProfileResponse(profile=profile)

    async def ListConsents(
        self, request: pb.ListConsentsRequest, context: Any
    ) -> pb.ListConsentsResponse:
        user_id = names.parse_user_name(request.parent, "parent")
        require_owner(request.parent, "parent")
        consents, token = await self.consents.list_consents(
            user_id, request.parent, request.page_size, request.page_token
        )
        return pb.ListConsentsResponse(consents=consents, next_page_token=token)

    async def GetConsent(
        self, request: pb.GetConsentRequest, context: Any
    ) -> pb.GetConsentResponse:
        user_id, purpose = names.parse_consent_name(request.name)
        require_owner(request.name)
        return pb.GetConsentResponse(consent=await self.consents.get(user_id, purpose))

    async def GrantConsent(
        self, request: pb.GrantConsentRequest, context: Any
    ) -> pb.GrantConsentResponse:
        user_id, purpose = names.parse_consent_name(request.name)
        require_owner(request.name)
        consent = await self.consents.grant(user_id, purpose, request.text_version, request.source)
        return pb.GrantConsentResponse(consent=consent)

    async def RevokeConsent(
        self, request: pb.RevokeConsentRequest, context: Any
    ) -> pb.RevokeConsentResponse:
        user_id, purpose = names.parse_consent_name(request.name)
        require_owner(request.name)
        consent = await self.consents.revoke(user_id, purpose, request.text_version, request.source)
        return pb.RevokeConsentResponse(consent=consent)

    async def ListConsentEvents(
        self, request: pb.ListConsentEventsRequest, context: Any
    ) -> pb.ListConsentEventsResponse:
        user_id, purpose = names.parse_consent_name(request.parent, "parent", allow_all=True)
        require_owner(request.parent, "parent")
        events, token = await self.consents.history(
            user_id, purpose, request.parent, request.page_size, request.page_token
        )
        return pb.ListConsentEventsResponse(consent_events=events, next_page_token=token)

    async def DeleteUser(
        self, request: pb.DeleteUserRequest, context: Any
    ) -> pb.DeleteUserResponse:
        user_id = names.parse_user_name(request.name)
        require_owner(request.name)
        return pb.DeleteUserResponse(erasure=await self.consents.delete_user(user_id))

    async def GetErasure(
        self, request: pb.GetErasureRequest, context: Any
    ) -> pb.GetErasureResponse:
        user_id = names.parse_erasure_name(request.name)
        # Admin only (the proto's access option): the user's tokens are gone by now.
        require_scope("admin")
        return pb.GetErasureResponse(erasure=await self.consents.get_erasure(user_id))


class ProfileInternalServicer(pb_grpc.ProfileInternalServiceServicer):
    """``tips.profile.v1.ProfileInternalService``: sign-up and the hot-path read model.

    Mesh-internal (never routed by the gateway), so no ownership check: the
    callers are services acting for many users.
    """

    def __init__(self, profiles: Profiles, contexts: UserContexts) -> None:
        self.profiles = profiles
        self.contexts = contexts

    async def CreateProfile(
        self, request: pb.CreateProfileRequest, context: Any
    ) -> pb.CreateProfileResponse:
        user_id = names.parse_user_name(request.parent, "parent")
        initial = request.profile
        domain.validate(initial, ("display_name", "time_zone", "language_code"))
        signup = SignUp(
            display_name=initial.display_name,
            time_zone=initial.time_zone,
            language_code=initial.language_code,
            email=request.email.strip(),
        )
        profile, created = await self.profiles.create(user_id, signup)
        return pb.CreateProfileResponse(profile=profile, created=created)

    async def GetUserContext(
        self, request: pb.GetUserContextRequest, context: Any
    ) -> pb.GetUserContextResponse:
        user_id = names.parse_user_name(request.user, "user")
        found = (await self.profiles.contexts_of([user_id])).get(user_id)
        if found is None:
            raise NotFound(request.user, resource_type="tips.app/User")
        return pb.GetUserContextResponse(user_context=found)

    async def BatchGetUserContexts(
        self, request: pb.BatchGetUserContextsRequest, context: Any
    ) -> pb.BatchGetUserContextsResponse:
        if len(request.users) > BATCH_MAX:
            raise InvalidArgument(
                [("users", f"at most {BATCH_MAX} users, got {len(request.users)}")]
            )
        ids = [names.parse_user_name(user, f"users[{i}]") for i, user in enumerate(request.users)]
        contexts = await self.profiles.contexts_of(ids)
        response = pb.BatchGetUserContextsResponse()
        for user, user_id in zip(request.users, ids, strict=True):
            found = contexts.get(user_id)
            if found is None:
                response.missing_users.append(user)
            else:
                response.user_contexts.append(found)
        return response

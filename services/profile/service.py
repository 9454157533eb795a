"""How the kernel runs the profile service.

On start it loads the read model (every profile and granted purpose), starts
the outbox relay (ProfileChanged, ConsentChanged, UserDeleted to
TIPS_PROFILE), the ``UserSignedUp`` consumer and, when
``TIPS_PROFILE_REPLICA_ID`` is set, the replica read-model sync.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kernel.bus import streams_for
from kernel.outbox import OutboxRelay
from kernel.service import Binding, Runtime, ServiceDefinition, bind
from services.profile import store
from services.profile.consumers import ReplicaSync, SignUps
from services.profile.core.consents import Consents
from services.profile.core.profiles import Profiles
from services.profile.readmodel import UserContexts
from services.profile.servicer import ProfileInternalServicer, ProfileServicer
from services.profile.settings import profile_settings
from tips.profile.v1 import events_pb2, profile_service_pb2, profile_service_pb2_grpc


async def build(runtime: Runtime) -> Sequence[Binding]:
    """The servicers, wired to what the runtime provides."""
    if runtime.db is None or runtime.bus is None:
        raise RuntimeError("the profile service needs the database and the bus")
    settings = profile_settings(runtime.settings)
    contexts = UserContexts()
    async with runtime.db.session() as session:
        contexts.load(await store.load_profiles(session), await store.granted_purposes(session))
    profiles = Profiles(runtime.db, contexts)
    consents = Consents(profiles)
    runtime.spawn(OutboxRelay(runtime.db, runtime.bus, store.outbox).run())
    runtime.spawn(SignUps(profiles, settings.profile_signup_durable).run(runtime.bus))
    if settings.profile_replica_id:
        sync = ReplicaSync(profiles, f"profile-readmodel-{settings.profile_replica_id}")
        for task in sync.tasks(runtime.bus):
            runtime.spawn(task)  # type: ignore[arg-type]
    pb, pb_grpc = profile_service_pb2, profile_service_pb2_grpc
    return [
        bind(ProfileServicer(profiles, consents), pb_grpc, pb, "ProfileService"),
        bind(ProfileInternalServicer(profiles, contexts), pb_grpc, pb, "ProfileInternalService"),
    ]


SERVICE = ServiceDefinition(
    name="profile",
    build=build,
    migrations_dir=Path(__file__).parent / "migrations",
    streams=streams_for(
        events_pb2.ProfileChanged, events_pb2.ConsentChanged, events_pb2.UserDeleted
    ),
)

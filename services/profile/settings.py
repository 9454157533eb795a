"""Settings of the profile service (``TIPS_PROFILE_*``), on top of the mesh's."""

from __future__ import annotations

from pydantic import Field

from kernel.settings import Settings


class ProfileSettings(Settings):
    """The mesh's settings plus the profile service's own knobs."""

    # Durable consumer of tips.auth.v1.user_signed_up (creates profiles).
    profile_signup_durable: str = Field(default="profile-signups", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    # Set per replica (e.g. the pod name) when running several replicas: the
    # replica then follows the service's own events with the durable
    # "profile-readmodel-<id>" to keep its read model current with writes
    # served by the others. Empty: one replica, its own writes suffice.
    profile_replica_id: str = Field(default="", pattern=r"^[A-Za-z0-9_-]{0,48}$")


def profile_settings(settings: Settings) -> ProfileSettings:
    """``settings`` as ProfileSettings (the profile fields read from the environment)."""
    if isinstance(settings, ProfileSettings):
        return settings
    return ProfileSettings(**settings.model_dump())

"""Resource names of the profile service; consent ids are ``kernel.profile_context``'s."""

from __future__ import annotations

from kernel.errors import InvalidArgument
from kernel.names import USER, Pattern, user_name
from kernel.profile_context import ALL_PURPOSES, consent_id, purpose_of

__all__ = ["ALL_PURPOSES", "consent_id", "purpose_of", "user_name"]

PROFILE = Pattern("users/{user}/profile")
ERASURE = Pattern("users/{user}/erasure")
CONSENT = Pattern("users/{user}/consents/{consent}")
EVERY_CONSENT = "-"


def profile_name(user_id: str) -> str:
    return PROFILE.format(user_id)


def consent_name(user_id: str, purpose: int) -> str:
    return CONSENT.format(user_id, consent_id(purpose))


def consent_event_name(user_id: str, purpose: int, event_id: str) -> str:
    return f"{consent_name(user_id, purpose)}/events/{event_id}"


def erasure_name(user_id: str) -> str:
    return ERASURE.format(user_id)


def parse_user_name(name: str, field: str = "name") -> str:
    """The user id of ``users/{user}``."""
    return USER.parse_one(name, field)


def parse_profile_name(name: str, field: str = "name") -> str:
    """The user id of ``users/{user}/profile``."""
    return PROFILE.parse_one(name, field)


def parse_erasure_name(name: str, field: str = "name") -> str:
    """The user id of ``users/{user}/erasure``."""
    return ERASURE.parse_one(name, field)


def parse_consent_name(
    name: str, field: str = "name", *, allow_all: bool = False
) -> tuple[str, int]:
    """(user id, purpose) of ``users/{user}/consents/{consent}``; purpose 0 for ``-``."""
    user_id, consent = CONSENT.parse(name, field)
    if allow_all and consent == EVERY_CONSENT:
        return user_id, 0
    purpose = purpose_of(consent)
    if purpose is None:
        known = ", ".join(sorted(consent_id(p) for p in ALL_PURPOSES))
        raise InvalidArgument([(field, f"unknown consent {consent!r}; one of: {known}")])
    return user_id, purpose

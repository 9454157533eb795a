"""Resource names of the profile service and the consent purpose <-> id mapping.

A consent's id is its purpose without the enum prefix, lower case with
hyphens: ``CONSENT_PURPOSE_CALENDAR_DATA_FOR_TIPS`` <-> ``calendar-data-for-tips``.
"""

from __future__ import annotations

import re

from kernel.errors import InvalidArgument
from tips.profile.v1 import consent_pb2

_PREFIX = "CONSENT_PURPOSE_"
# User ids are opaque, but they go into resource names and logs: keep them plain.
_USER_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
ALL_PURPOSES: tuple[int, ...] = tuple(
    v.number for v in consent_pb2.ConsentPurpose.DESCRIPTOR.values if v.number != 0
)
EVERY_CONSENT = "-"


def consent_id(purpose: int) -> str:
    name = consent_pb2.ConsentPurpose.Name(purpose)  # type: ignore[arg-type]
    return name.removeprefix(_PREFIX).lower().replace("_", "-")


_BY_ID: dict[str, int] = {consent_id(p): p for p in ALL_PURPOSES}


def purpose_of(consent: str) -> int | None:
    """The purpose named by a consent id, None when there is none."""
    return _BY_ID.get(consent)


def user_name(user_id: str) -> str:
    return f"users/{user_id}"


def profile_name(user_id: str) -> str:
    return f"users/{user_id}/profile"


def consent_name(user_id: str, purpose: int) -> str:
    return f"users/{user_id}/consents/{consent_id(purpose)}"


def consent_event_name(user_id: str, purpose: int, event_id: str) -> str:
    return f"{consent_name(user_id, purpose)}/events/{event_id}"


def erasure_name(user_id: str) -> str:
    return f"users/{user_id}/erasure"


def _split(name: str, field: str, shape: str, size: int) -> list[str]:
    parts = name.split("/")
    if (
        len(parts) != size
        or parts[0] != "users"
        or not _USER_ID.match(parts[1])
        or any(not p for p in parts)
    ):
        raise InvalidArgument([(field, f"must be {shape}, got {name!r}")])
    return parts


def parse_user_name(name: str, field: str = "name") -> str:
    """The user id of ``users/{user}``."""
    return _split(name, field, "users/{user}", 2)[1]


def parse_profile_name(name: str, field: str = "name") -> str:
    """The user id of ``users/{user}/profile``."""
    parts = _split(name, field, "users/{user}/profile", 3)
    if parts[2] != "profile":
        raise InvalidArgument([(field, f"must be users/{{user}}/profile, got {name!r}")])
    return parts[1]


def parse_erasure_name(name: str, field: str = "name") -> str:
    """The user id of ``users/{user}/erasure``."""
    parts = _split(name, field, "users/{user}/erasure", 3)
    if parts[2] != "erasure":
        raise InvalidArgument([(field, f"must be users/{{user}}/erasure, got {name!r}")])
    return parts[1]


def parse_consent_name(
    name: str, field: str = "name", *, allow_all: bool = False
) -> tuple[str, int]:
    """(user id, purpose) of ``users/{user}/consents/{consent}``; purpose 0 for ``-``."""
    shape = "users/{user}/consents/{consent}"
    parts = _split(name, field, shape, 4)
    if parts[2] != "consents":
        raise InvalidArgument([(field, f"must be {shape}, got {name!r}")])
    if allow_all and parts[3] == EVERY_CONSENT:
        return parts[1], 0
    purpose = purpose_of(parts[3])
    if purpose is None:
        known = ", ".join(sorted(_BY_ID))
        raise InvalidArgument([(field, f"unknown consent {parts[3]!r}; one of: {known}")])
    return parts[1], purpose

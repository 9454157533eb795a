"""The caller's identity: parsing metadata and the ownership/scope checks."""

from __future__ import annotations

import pytest

from kernel.errors import InvalidArgument, PermissionDenied, Unauthenticated
from kernel.identity import (
    Caller,
    acting_as,
    caller_from_metadata,
    current_caller,
    parse_user,
    require_caller,
    require_owner,
    require_scope,
)

pytestmark = pytest.mark.unit

ALICE = Caller(user="u_1", scopes=frozenset({"tips.read", "admin"}), session="s_9")


def test_parse_metadata() -> None:
    md = [("x-tips-user", "u_1"), ("x-tips-scopes", "tips.read  admin"), ("x-tips-session", "s_9")]
    assert caller_from_metadata(md) == ALICE
    assert caller_from_metadata([("x-tips-scopes", "admin")]) is None
    assert caller_from_metadata([("x-tips-user", "  ")]) is None
    assert caller_from_metadata(None) is None


def test_metadata_round_trip() -> None:
    assert caller_from_metadata(ALICE.to_metadata()) == ALICE


def test_require_caller() -> None:
    with pytest.raises(Unauthenticated):
        require_caller()
    with acting_as(ALICE):
        assert require_caller() is ALICE
    assert current_caller() is None


@pytest.mark.parametrize("name", ["users/u_1", "users/u_1/tips/t_2"])
def test_owner_allowed(name: str) -> None:
    with acting_as(ALICE):
        assert require_owner(name) is ALICE


def test_owner_denied_for_another_user() -> None:
    with acting_as(ALICE), pytest.raises(PermissionDenied):
        require_owner("users/u_2/tips/t_1")


@pytest.mark.parametrize("name", ["", "users", "users/", "tips/t_1", "users//tips", "u_1"])
def test_malformed_name_names_the_field(name: str) -> None:
    with acting_as(ALICE), pytest.raises(InvalidArgument) as err:
        require_owner(name, "tip.name")
    assert [field for field, _ in err.value.violations] == ["tip.name"]


def test_parse_user() -> None:
    assert parse_user("users/u_7/preferences") == "u_7"


def test_scopes() -> None:
    with acting_as(ALICE):
        assert require_scope("admin") is ALICE
        with pytest.raises(PermissionDenied) as err:
            require_scope("ml.promote")
    assert err.value.reason == "MISSING_SCOPE"

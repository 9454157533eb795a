"""The caller's identity: parsing metadata and the ownership/scope checks."""

from __future__ import annotations

import pytest

from kernel.errors import InvalidArgument, PermissionDenied, Unauthenticated
from kernel.identity import (
    Caller,
    acting_as,
    authorization_of,
    current_caller,
    parse_user,
    require_caller,
    require_owner,
    require_scope,
)

pytestmark = pytest.mark.unit

ALICE = Caller(user="u_1", scopes=frozenset({"tips.read", "admin"}), session="s_9")


def test_the_authorization_metadata_is_read() -> None:
    assert authorization_of([("x-other", "1"), ("authorization", "Bearer abc")]) == "Bearer abc"
    assert authorization_of([("x-other", "1")]) is None
    assert authorization_of(None) is None


@pytest.mark.parametrize("header", ["x-tips-user", "x-tips-scopes", "x-tips-session"])
def test_an_unchecked_identity_header_is_refused(header: str) -> None:
    with pytest.raises(Unauthenticated) as err:
        authorization_of([(header, "u_mallory"), ("authorization", "Bearer abc")])
    assert err.value.reason == "IDENTITY_HEADER_REFUSED"
    assert header in str(err.value)


def test_the_next_hop_gets_the_token_and_nothing_else() -> None:
    assert ALICE.to_metadata() == []  # no token: nothing another service could verify
    with_token = Caller(user="u_1", token="t.o.k")
    assert with_token.to_metadata() == [("authorization", "Bearer t.o.k")]
    assert with_token == Caller(user="u_1") and "t.o.k" not in repr(with_token)


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

"""Page tokens: round trip, and a foreign or altered token is rejected naming the field."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kernel import paging
from kernel.errors import InvalidArgument

pytestmark = pytest.mark.unit

AT = datetime(2026, 11, 29, 8, 30, tzinfo=UTC)


def test_a_token_resumes_after_its_cursor() -> None:
    token = paging.encode(paging.Cursor(AT, "s_42"), "kinds=1")
    assert paging.decode(token, "kinds=1") == paging.Cursor(AT, "s_42")


def test_an_empty_token_is_the_first_page() -> None:
    assert paging.decode("", "anything") is None


@pytest.mark.parametrize("token", ["not base64 json", "e30=", "eyJmIjoxfQ=="])
def test_garbage_is_rejected_naming_page_token(token: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        paging.decode(token, "kinds=1")
    assert [field for field, _ in raised.value.violations] == ["page_token"]


def test_a_token_from_other_filters_is_rejected() -> None:
    token = paging.encode(paging.Cursor(AT, "s_42"), "kinds=1")
    with pytest.raises(InvalidArgument):
        paging.decode(token, "kinds=2")


@pytest.mark.parametrize(("requested", "expected"), [(0, 50), (1, 1), (1000, 1000)])
def test_page_size_defaults_and_bounds(requested: int, expected: int) -> None:
    assert paging.page_size(requested, default=50, maximum=1000) == expected


@pytest.mark.parametrize("requested", [-1, 1001])
def test_page_size_out_of_range_names_the_field(requested: int) -> None:
    with pytest.raises(InvalidArgument) as raised:
        paging.page_size(requested, default=50, maximum=1000)
    assert raised.value.violations[0][0] == "page_size"

"""The edge's trace context when no span is recorded: minted, the client's trace kept."""

from __future__ import annotations

import re

import pytest

from gateway.telemetry import minted_traceparent

pytestmark = pytest.mark.unit

W3C = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-00$")
CLIENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_a_request_without_one_gets_a_new_unsampled_trace() -> None:
    first, second = minted_traceparent(None), minted_traceparent(None)
    for value in (first, second):
        found = W3C.match(value)
        assert found and int(found[1], 16) and int(found[2], 16)
    assert first.split("-")[1] != second.split("-")[1]


def test_the_clients_trace_id_is_kept_under_a_new_span_id() -> None:
    minted = W3C.match(minted_traceparent(CLIENT))
    assert minted is not None
    assert minted[1] == "0af7651916cd43dd8448eb211c80319c"
    assert minted[2] != "b7ad6b7169203331"


@pytest.mark.parametrize(
    "bad", ["", "garbage", "00-00000000000000000000000000000000-b7ad6b7169203331-01"]
)
def test_an_invalid_client_traceparent_starts_a_new_trace(bad: str) -> None:
    minted = W3C.match(minted_traceparent(bad))
    assert minted is not None and int(minted[1], 16)
    assert minted[1] != "00000000000000000000000000000000"

"""How many messages a consumer's pull asks for (``kernel.bus.fetch_size``)."""

from __future__ import annotations

import pytest

from kernel.bus import fetch_size

pytestmark = pytest.mark.unit


def test_an_idle_consumer_asks_for_one_so_the_next_message_is_not_held_back() -> None:
    # Asked for a whole batch, nats-py's fetch holds a lone message until its timeout.
    assert fetch_size(0, 64) == 1


def test_a_backlog_is_pulled_as_the_server_reports_it_up_to_the_batch() -> None:
    assert fetch_size(5, 64) == 5
    assert fetch_size(64, 64) == 64
    assert fetch_size(10_000, 64) == 64

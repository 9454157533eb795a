"""Bus.publish_many against a real nats-server: order, dedupe, per-item errors."""

from __future__ import annotations

from typing import Any

import nats
import pytest

from kernel.bus import MSG_ID_HEADER, Bus, BusError, PubAck, StreamSpec
from kernel.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def prefix(settings: Settings, bus_ns: str, cleanup_streams: list[str]) -> Any:
    name, prefix = f"PM{bus_ns}", f"pm{bus_ns}"
    bus = await Bus.connect(settings, "setup")
    try:
        await bus.ensure_streams([StreamSpec(name, (f"{prefix}.>",), memory=True)])
        cleanup_streams.append(name)
    finally:
        await bus.close()
    return name, prefix


async def test_publish_many_acks_in_order_dedupes_and_reports_per_item(
    settings: Settings, prefix: tuple[str, str]
) -> None:
    stream, subject = prefix[0], f"{prefix[1]}.x"
    bus = await Bus.connect(settings, "pm")
    try:
        items = [(subject, f"m{i}".encode(), {MSG_ID_HEADER: f"id-{i}"}) for i in range(2500)]
        items.insert(3, (subject, b"no id", {}))
        # Small waves: the 2500 messages go out in 3 waves, acks matched across them.
        outcomes = await bus.publish_many(items, ack_timeout=5, in_flight=1000)
        assert isinstance(outcomes[3], BusError)
        acks = [o for o in outcomes if isinstance(o, PubAck)]
        assert len(acks) == 2500
        assert [a.seq for a in acks] == list(range(1, 2501))  # written in order
        assert all(a.stream == stream and not a.duplicate for a in acks)
        again = await bus.publish_many(items[:2], ack_timeout=5)
        assert all(isinstance(a, PubAck) and a.duplicate for a in again)
        # No stream captures this subject: an error per item, nothing hangs.
        lost = await bus.publish_many([("nostream.x", b"", {MSG_ID_HEADER: "z"})], ack_timeout=2)
        assert isinstance(lost[0], BusError)
        assert not bus._acks  # every pending ack was forgotten
    finally:
        await bus.close()
    nc = await nats.connect(settings.nats_url)
    try:
        info = await nc.jetstream().stream_info(stream)
        assert info.state.messages == 2500
    finally:
        await nc.close()

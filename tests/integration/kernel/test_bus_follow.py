"""Bus.follow against a real nats-server: the recent window, then live, per process."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kernel.bus import Bus, Delivery, StreamSpec
from kernel.settings import Settings

pytestmark = pytest.mark.integration


async def test_follow_replays_from_start_time_then_live_and_cleans_up(
    nats_url: str, bus_ns: str, cleanup_streams: list[str], test_events: dict[str, Any]
) -> None:
    thing = test_events["ThingHappened"]
    name, subject = f"TF{bus_ns}", f"tf{bus_ns}.thing"
    bus = await Bus.connect(Settings(nats_url=nats_url), "follow-test")
    try:
        await bus.ensure_streams([StreamSpec(name, (subject,), max_age=300, memory=True)])
        cleanup_streams.append(name)
        await bus.publish(thing(event_id="old"), msg_id="old", subject=subject)
        await asyncio.sleep(0.05)
        start = datetime.now(UTC) - timedelta(milliseconds=1)
        await bus.publish(thing(event_id="recent"), msg_id="recent", subject=subject)

        seen: list[str] = []
        caught_up = asyncio.Event()

        async def handler(delivery: Delivery[Any]) -> None:
            seen.append(delivery.message.event_id)

        # Two followers: each gets every message (not shared like a durable).
        tasks = [
            asyncio.create_task(
                bus.follow(
                    stream=name,
                    subjects=[subject],
                    message_type=thing,
                    handler=handler,
                    start_time=start,
                    fetch_timeout=0.2,
                    on_caught_up=caught_up.set,
                )
            )
            for _ in range(2)
        ]
        async with asyncio.timeout(10):
            await caught_up.wait()
        await bus.publish(thing(event_id="live"), msg_id="live", subject=subject)
        for _ in range(100):
            if seen.count("live") == 2:
                break
            await asyncio.sleep(0.05)
        assert sorted(seen) == ["live", "live", "recent", "recent"]

        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # The per-process consumers are gone with their followers.
        info = await bus._js.stream_info(name)
        assert info.state.consumer_count == 0
    finally:
        await bus.close()


async def test_follow_passes_over_the_ids_it_is_told_to_unparsed(
    nats_url: str, bus_ns: str, cleanup_streams: list[str], test_events: dict[str, Any]
) -> None:
    """A replica's own events come back on its follower: skipped by their message id,
    before they are parsed; the others arrive in order, replayed and live."""
    thing = test_events["ThingHappened"]
    name, subject = f"TP{bus_ns}", f"tp{bus_ns}.thing"
    bus = await Bus.connect(Settings(nats_url=nats_url), "follow-test")
    try:
        await bus.ensure_streams([StreamSpec(name, (subject,), max_age=300, memory=True)])
        cleanup_streams.append(name)
        start = datetime.now(UTC) - timedelta(seconds=1)
        await bus.publish(thing(event_id="theirs-1"), msg_id="theirs-1", subject=subject)
        await bus.publish(thing(event_id="mine-1"), msg_id="mine-1", subject=subject)
        await bus.publish(thing(event_id="theirs-2"), msg_id="theirs-2", subject=subject)
        seen: list[str] = []
        arrived = asyncio.Event()

        async def handler(delivery: Delivery[Any]) -> None:
            seen.append(delivery.message.event_id)
            arrived.set()

        async def until(count: int) -> None:
            async with asyncio.timeout(30):
                while len(seen) < count:
                    arrived.clear()
                    await arrived.wait()

        task = asyncio.create_task(
            bus.follow(
                stream=name,
                subjects=[subject],
                message_type=thing,
                handler=handler,
                start_time=start,
                fetch_timeout=0.2,
                passed_over=lambda msg_id: msg_id.startswith("mine-"),
            )
        )
        try:
            await until(2)
            await bus.publish(thing(event_id="mine-2"), msg_id="mine-2", subject=subject)
            await bus.publish(thing(event_id="theirs-3"), msg_id="theirs-3", subject=subject)
            await until(3)
            assert seen == ["theirs-1", "theirs-2", "theirs-3"]
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await bus.close()

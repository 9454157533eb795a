"""Waiting for asynchronous effects in tests: bounded polls, and what is on a stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    within: float = 15.0,
    every: float = 0.05,
) -> T:
    """Poll ``probe`` until ``done`` holds, for at most ``within`` seconds.

    Consumers, relays and read models are asynchronous: a test waits for the
    effect, bounded, and fails with the last value it saw.
    """
    loop = asyncio.get_running_loop()
    give_up = loop.time() + within
    while True:
        value = await probe()
        if done(value):
            return value
        if loop.time() > give_up:
            raise AssertionError(f"condition not met within {within}s; last value: {value!r}")
        await asyncio.sleep(every)


async def stream_msg_ids(nats_url: str, stream: str, subject: str) -> list[str]:
    """``Nats-Msg-Id`` of every message on ``subject``, duplicates included."""
    nc = await nats.connect(nats_url, connect_timeout=2, max_reconnect_attempts=1)
    try:
        config = ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL)
        sub = await nc.jetstream().pull_subscribe(subject, stream=stream, config=config)
        ids: list[str] = []
        # nats-py raises its own TimeoutError or asyncio's: both are TimeoutError.
        with contextlib.suppress(TimeoutError):
            while True:
                for msg in await sub.fetch(1000, timeout=1.0):
                    ids.append((msg.headers or {}).get("Nats-Msg-Id", ""))
        await sub.unsubscribe()
        return ids
    finally:
        await nc.close()

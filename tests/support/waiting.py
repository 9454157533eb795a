"""Waiting for asynchronous effects in tests: bounded polls, and what is on a stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import nats
from google.protobuf.message import Message
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

T = TypeVar("T")
M = TypeVar("M", bound=Message)
# Codes a probe may answer on a loaded machine without anything being wrong.
_RETRIED = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)


async def eventually(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    within: float = 15.0,
    every: float = 0.05,
) -> T:
    """Poll ``probe`` until ``done`` holds, for at most ``within`` seconds.

    Consumers, relays and read models are asynchronous: a test waits for the
    effect, bounded, and fails with the last value it saw. A probe that times
    out (a busy machine: a gRPC deadline, a NATS request) is asked again.
    """
    loop = asyncio.get_running_loop()
    give_up = loop.time() + within
    while True:
        try:
            value: Any = await probe()
        except (TimeoutError, grpc.aio.AioRpcError) as exc:
            if isinstance(exc, grpc.aio.AioRpcError) and exc.code() not in _RETRIED:
                raise
            value = exc
        else:
            if done(value):
                return value  # type: ignore[no-any-return]
        if loop.time() > give_up:
            raise AssertionError(f"condition not met within {within}s; last value: {value!r}")
        await asyncio.sleep(every)


async def stream_messages(
    nats_url: str, stream: str, subject: str, *, within: float = 30.0
) -> list[Msg]:
    """Every message stored on ``subject`` in ``stream`` right now, in stream order.

    An ephemeral consumer counts the messages when it is created
    (``num_pending``); the fetches then read exactly that many, each with a
    generous deadline. Ending on "a fetch timed out" instead would cut the
    list short whenever one fetch is slow (a loaded machine), and nats-py
    raises asyncio's TimeoutError from some fetch paths, not its own.
    """
    servers = nats_url.split(",")  # a cluster's URLs, as TIPS_NATS_URL lists them
    nc = await nats.connect(servers, connect_timeout=5, max_reconnect_attempts=3)
    try:
        js = nc.jetstream()
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, mem_storage=True
        )
        sub = await js.pull_subscribe(subject, stream=stream, config=config)
        expected = (await sub.consumer_info()).num_pending or 0
        loop = asyncio.get_running_loop()
        give_up = loop.time() + within
        msgs: list[Msg] = []
        while len(msgs) < expected:
            left = give_up - loop.time()
            if left <= 0:
                raise AssertionError(
                    f"read {len(msgs)} of the {expected} messages on {subject} within {within}s"
                )
            with contextlib.suppress(TimeoutError):  # nats-py's and asyncio's alike
                msgs += await sub.fetch(min(expected - len(msgs), 1000), timeout=min(left, 5.0))
        await sub.unsubscribe()
        return msgs
    finally:
        await nc.close()


async def stream_events(nats_url: str, stream: str, subject: str, message_type: type[M]) -> list[M]:
    """``stream_messages`` decoded as ``message_type``."""
    return [
        message_type.FromString(m.data) for m in await stream_messages(nats_url, stream, subject)
    ]


async def stream_msg_ids(nats_url: str, stream: str, subject: str) -> list[str]:
    """``Nats-Msg-Id`` of every message on ``subject``, duplicates included."""
    return [
        (m.headers or {}).get("Nats-Msg-Id", "")
        for m in await stream_messages(nats_url, stream, subject)
    ]

"""A shared NATS left as found: tests delete the streams and consumers they made."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable

import nats
import nats.js.errors


async def existing_streams(nats_url: str, names: Iterable[str]) -> set[str]:
    """Which of ``names`` exist on the server now."""
    nc = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=3)
    try:
        js, found = nc.jetstream(), set()
        for name in names:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.stream_info(name)
                found.add(name)
        return found
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def left_as_found(
    nats_url: str, streams: Iterable[str], consumers: Iterable[tuple[str, str]] = ()
) -> AsyncIterator[None]:
    """Around a test stack: afterwards, delete the durable ``consumers`` ((stream,
    durable) pairs) and those of ``streams`` that did not exist before."""
    wanted = tuple(streams)
    before = await existing_streams(nats_url, wanted)
    try:
        yield
    finally:
        nc = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=3)
        try:
            js = nc.jetstream()
            for stream, durable in consumers:
                with contextlib.suppress(Exception):
                    await js.delete_consumer(stream, durable)
            for name in set(wanted) - before:
                with contextlib.suppress(Exception):
                    await js.delete_stream(name)
        finally:
            await nc.close()

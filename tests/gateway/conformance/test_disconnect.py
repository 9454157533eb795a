"""A client that goes away cancels its upstream call, unary and streaming.

The backend's Block and BlockStream would run for a minute; the test opens a
raw HTTP connection, waits until the backend has the call, closes the
connection and waits (generously, the machine may be loaded) for the backend
to see its call cancelled. How long that took is printed: the goal is under
100 ms (docs/http-stack.md records the measurements).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from tests.gateway.conformance.conftest import Rig

pytestmark = pytest.mark.integration
BLOCK_SECONDS = 60.0
WAIT = 20.0  # for a condition, never a fixed sleep


async def _until(what: str, probe: object, key: str) -> float:
    deadline = time.monotonic() + WAIT
    while key not in probe:  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)
    return probe[key]  # type: ignore[index,no-any-return]


async def _open_and_leave(rig: Rig, path: str, tag: str, read_first_line: bool) -> float:
    """Request ``path``, wait for the backend to start it, hang up; seconds to cancel."""
    url = urlsplit(rig.base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: edge\r\nAccept: */*\r\n\r\n".encode())
    await writer.drain()
    await _until("the backend to start the call", rig.backend.started, tag)
    if read_first_line:  # a stream: its first message reached the client
        async with asyncio.timeout(WAIT):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        async with asyncio.timeout(WAIT):
            assert tag.encode() in await reader.readuntil(b"}}")
    left = time.monotonic()
    writer.close()
    await writer.wait_closed()
    cancelled = await _until("the backend to see the call cancelled", rig.backend.cancelled, tag)
    return cancelled - left


async def test_a_client_that_leaves_cancels_the_unary_call(rig: Rig) -> None:
    took = await _open_and_leave(
        rig, f"/v1/block/unary-1?seconds={BLOCK_SECONDS}", "unary-1", False
    )
    print(f"unary call cancelled {took * 1000:.1f} ms after the client left")
    assert took < BLOCK_SECONDS / 2  # cancelled, not run to its end


async def test_a_client_that_leaves_cancels_the_stream(rig: Rig) -> None:
    path = f"/v1/blockStream/stream-1?seconds={BLOCK_SECONDS}"
    took = await _open_and_leave(rig, path, "stream-1", True)
    print(f"stream cancelled {took * 1000:.1f} ms after the client left")
    assert took < BLOCK_SECONDS / 2


async def test_a_client_that_stays_gets_its_answer(rig: Rig) -> None:
    answer = await rig.client.get("/v1/block/stays?seconds=0.05")
    assert answer.status_code == 200 and answer.json()["name"] == "stays"
    assert "stays" not in rig.backend.cancelled

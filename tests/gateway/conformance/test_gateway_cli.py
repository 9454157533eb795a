"""``python -m gateway --descriptor-set ... --upstream ...`` serves any API over real HTTP."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.gateway.conformance.conftest import ROOT, SERVICE, free_port

if TYPE_CHECKING:
    from tests.gateway.conformance.conftest import Rig

pytestmark = pytest.mark.integration


async def test_cli_serves_a_foreign_descriptor_set(rig: Rig) -> None:
    port = free_port()
    env = {**os.environ, "TIPS_LOG_LEVEL": "WARNING"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "--descriptor-set",
        str(rig.descriptor_set),
        "--upstream",
        f"{SERVICE}={rig.backend_addr}",
        "--listen",
        f"127.0.0.1:{port}",
        "--no-auth",
        cwd=ROOT,
        env=env,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for _ in range(200):  # up in about a second
                try:
                    ready = await client.get("/healthz")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            assert ready.status_code == 200
            echo = await client.get("/v1/echo/cli", params={"big": "5"})
            assert echo.status_code == 200 and echo.json()["big"] == "5"
            # --no-auth: a token-protected route answers without a token.
            who = await client.get("/v1/users/u7/whoami")
            assert who.status_code == 200 and "x-tips-user" not in who.json()["metadata"]
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await process.wait() == 0


async def test_cli_rejects_a_bad_upstream_flag() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "--descriptor-set",
        "x.binpb",
        "--upstream",
        "no-equals-sign",
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(20):
        _, err = await process.communicate()
    assert process.returncode != 0
    assert b"--upstream wants NAME=HOST:PORT" in err

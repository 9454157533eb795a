"""The server as a real process: drain on SIGTERM, clear failures at start."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import grpc
import pytest
from kernel_echo_service import echo_pb2, echo_pb2_grpc

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = Path(__file__).with_name("kernel_echo_service.py")


async def _spawn(*args: str, **env: str) -> asyncio.subprocess.Process:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TIPS_")}
    full_env["TIPS_INSECURE"] = "1"  # these tests are about the process, not TLS
    full_env.update(env)
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "gen/python")])
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        *args,
        cwd=ROOT,
        env=full_env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_sigterm_drains_in_flight_rpc_and_exits_zero() -> None:
    proc = await _spawn(TIPS_DRAIN_SECONDS="5", TIPS_LOG_FORMAT="json")
    assert proc.stderr is not None
    logs: list[dict[str, object]] = []
    port = 0
    while not port:
        async with asyncio.timeout(20):
            line = await proc.stderr.readline()
        assert line, "server exited before serving"
        entry = json.loads(line)
        logs.append(entry)
        if entry["message"] == "serving":
            port = int(str(entry["port"]))

    async def read_rest() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            logs.append(json.loads(raw))

    reader = asyncio.create_task(read_rest())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = echo_pb2_grpc.EchoServiceStub(ch)
        slow = asyncio.ensure_future(stub.Slow(echo_pb2.SlowRequest(seconds=1.5), timeout=10))
        await asyncio.sleep(0.5)  # the RPC is in flight
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as fresh:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await echo_pb2_grpc.EchoServiceStub(fresh).Echo(echo_pb2.EchoRequest(), timeout=2)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        reply = await slow
        assert reply.message == "slow done"
        async with asyncio.timeout(10):
            rc = await proc.wait()
    await reader
    assert rc == 0
    assert time.monotonic() - stopped_at < 5.0
    messages = [e["message"] for e in logs]
    assert messages.index("draining") < messages.index("stopped")
    access = [e for e in logs if e["logger"] == "tips.access"]
    assert any(e["rpc_method"].endswith("/Slow") and e["code"] == "OK" for e in access)


async def test_invalid_settings_exit_2_with_one_line() -> None:
    proc = await _spawn(TIPS_DRAIN_SECONDS="-1")
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1
    assert "TIPS_DRAIN_SECONDS" in lines[0]


async def test_no_certificates_and_not_insecure_exits_2_naming_the_settings() -> None:
    proc = await _spawn(TIPS_INSECURE="0")
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "TIPS_TLS_CA_FILE" in lines[0] and "TIPS_INSECURE=1" in lines[0]


async def test_unreachable_database_exits_1_within_the_limit() -> None:
    proc = await _spawn(
        "--db",
        TIPS_DATABASE_URL="postgresql://svc:pw-do-not-log@127.0.0.1:1/tips",
        TIPS_STARTUP_TIMEOUT_SECONDS="1.5",
        TIPS_LOG_FORMAT="json",
    )
    start = time.monotonic()
    async with asyncio.timeout(30):
        _, err = await proc.communicate()
    assert proc.returncode == 1
    text = err.decode()
    last = text.strip().splitlines()[-1]
    assert last.startswith("tips echo: cannot start: could not reach PostgreSQL within 1.5s")
    assert "pw-do-not-log" not in text
    assert time.monotonic() - start < 15

"""The server as a real process: drain on SIGTERM, clear failures at start, the
access log as it is written (unknown methods too)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import grpc
import pytest
from kernel_echo_service import SERVICE_NAME, echo_pb2, echo_pb2_grpc

from kernel.interceptors import SHOWN_PATH_CHARS
from tests.support.h2bare import bare_call

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


# A caller's trace, and values no log line may carry.
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
SECRETS = ("Bearer probe-secret-token", "probe-secret-value")
# A path to inject a line of its own, then a field, into text logs; and long.
FORGED = "\n12:00:00.000 INFO    echo tips.access: rpc rpc_method=Forged code=OK user=u_admin"
LONG_PATH = f"/probe.Unknown/Probe{FORGED} user=u_admin{'x' * 1000}"
# One access-log line in text logs, and its fields (values have no spaces).
ACCESS = re.compile(r"^\S+ INFO +echo tips\.access: rpc (?P<fields>.*)$")


async def test_unknown_methods_are_logged_once_each_bounded_and_on_one_line() -> None:
    """A client probing for methods is seen: a call to an unknown method, of a
    known service or not, has one access-log line at INFO as any call, with
    the path it sent (escaped and cut: in text logs a newline or a space in it
    starts no line nor field of its own), UNIMPLEMENTED, the peer's address,
    and no metadata value;
    a known call's line is as it was. Unknown tooling paths stay at DEBUG."""
    proc = await _spawn(TIPS_LOG_FORMAT="text")
    assert proc.stderr is not None
    lines: list[str] = []
    port = 0
    while not port:
        async with asyncio.timeout(20):
            raw = await proc.stderr.readline()
        assert raw, "server exited before serving"
        lines.append(raw.decode().rstrip("\n"))
        if serving := re.search(r" tips\.server: serving .*\bport=(\d+)", lines[-1]):
            port = int(serving[1])
    metadata = (("authorization", SECRETS[0]), ("x-probe", SECRETS[1]))
    unknown = [f"/{SERVICE_NAME}/Nope", "/no.such.Service/Probe"]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await echo_pb2_grpc.EchoServiceStub(channel).Echo(
            echo_pb2.EchoRequest(message="hi"), timeout=10
        )
        assert reply.message == "hi"
        for path in [*unknown, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"]:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await channel.unary_unary(path)(
                    b"", metadata=(*metadata, ("traceparent", TRACEPARENT)), timeout=10
                )
            assert failed.value.code() is grpc.StatusCode.UNIMPLEMENTED, path
    answer = await bare_call(port, LONG_PATH, b"", metadata)
    assert answer.get("grpc-status") == str(grpc.StatusCode.UNIMPLEMENTED.value[0]), answer
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(10):
        _, rest = await proc.communicate()
    assert proc.returncode == 0
    lines += rest.decode().splitlines()
    access = [_fields(m["fields"]) for m in map(ACCESS.match, lines) if m]
    assert len(access) == 4, lines  # none at INFO for the tooling path, none forged
    assert not any(secret in line for line in lines for secret in SECRETS)
    known, *probes = access
    assert known.keys() == {"rpc_method", "code", "duration_ms", "trace_id", "peer"}
    assert re.fullmatch(r"ipv4:127\.0\.0\.1:\d+", known["peer"]), known
    assert known["rpc_method"] == f"{SERVICE_NAME}/Echo" and known["code"] == "OK"
    assert [p["rpc_method"] for p in probes[:2]] == [path[1:] for path in unknown]
    assert [p["trace_id"] for p in probes[:2]] == [TRACE_ID, TRACE_ID]
    long = probes[2]["rpc_method"]
    assert long.startswith("probe.Unknown/Probe%0A12%3A00%3A00.000%20INFO%20%20%20%20echo")
    assert long.endswith(f"...[cut:{len(LONG_PATH) - 1}chars]")
    assert len(long) == SHOWN_PATH_CHARS + len(f"...[cut:{len(LONG_PATH) - 1}chars]")
    for probe in probes:
        assert probe.keys() == known.keys()
        assert probe["code"] == "UNIMPLEMENTED" and float(probe["duration_ms"]) >= 0
    # The probes' address is known: the calls came on the first call's connection.
    assert {p["peer"] for p in probes[:2]} == {known["peer"]}


def _fields(text: str) -> dict[str, str]:
    """A text log line's ``name=value`` fields."""
    return {name: value for name, _, value in (f.partition("=") for f in text.split(" "))}


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

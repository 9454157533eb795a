"""The echo service the kernel's integration tests serve (also as a process)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from kernel import deadline, telemetry
from kernel.clients import channel_to
from kernel.errors import FailedPrecondition, InvalidArgument, NotFound
from kernel.identity import current_caller, require_owner
from kernel.service import Binding, Runtime, ServiceDefinition

PROTO_DIR = Path(__file__).parent / "protos"
if str(PROTO_DIR) not in sys.path:
    sys.path.insert(0, str(PROTO_DIR))
echo_pb2, echo_pb2_grpc = grpc.protos_and_services("kernel_echo.proto")

SERVICE_NAME = "tipstest.echo.v1.EchoService"


def _seen(message: str = "") -> Any:
    caller = current_caller()
    left = deadline.remaining()
    ids = telemetry.current_ids()
    return echo_pb2.EchoResponse(
        message=message,
        user=caller.user if caller else "",
        deadline_left=-1.0 if left is None else left,
        trace_id=ids[0] if ids else "",
    )


def _raise(kind: str) -> None:
    if kind == "invalid":
        raise InvalidArgument([("page_size", "must be between 1 and 100")])
    if kind == "not_found":
        raise NotFound("users/u_1/tips/t_9", resource_type="tips.app/Tip")
    if kind == "precondition":
        raise FailedPrecondition("consent missing", reason="CONSENT_REQUIRED")
    if kind == "owner":
        require_owner("users/u_other/tips/t_1", "tip.name")
    if kind == "crash":
        raise RuntimeError("db password=hunter2 exploded")


class EchoServicer(echo_pb2_grpc.EchoServiceServicer):  # type: ignore[misc,name-defined]
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def Echo(self, request: Any, context: Any) -> Any:
        return _seen(request.message)

    async def Stream(self, request: Any, context: Any) -> AsyncIterator[Any]:
        for i in range(request.count):
            yield _seen(str(i))
        if request.fail_kind:
            _raise(request.fail_kind)

    async def Fail(self, request: Any, context: Any) -> Any:
        _raise(request.kind)
        return _seen()

    async def Relay(self, request: Any, context: Any) -> Any:
        stub = echo_pb2_grpc.EchoServiceStub(
            channel_to(request.target, self.runtime.settings, "echo")
        )
        if request.slow_seconds:
            response = await stub.Slow(echo_pb2.SlowRequest(seconds=request.slow_seconds))
        else:
            response = await stub.Echo(echo_pb2.EchoRequest(message="relayed"))
        response.upstream_trace_id = _seen().trace_id
        return response

    async def Slow(self, request: Any, context: Any) -> Any:
        await asyncio.sleep(request.seconds)
        return _seen("slow done")


async def _build(runtime: Runtime) -> Sequence[Binding]:
    return [
        Binding(
            servicer=EchoServicer(runtime),
            add_to_server=echo_pb2_grpc.add_EchoServiceServicer_to_server,
            descriptor=echo_pb2.DESCRIPTOR.services_by_name["EchoService"],
        )
    ]


ECHO = ServiceDefinition(name="echo", build=_build, uses_db=False, uses_bus=False)

if __name__ == "__main__":
    # The drain and start-up tests run this as its own process, on a free port.
    from dataclasses import replace

    from kernel.server import run

    run(replace(ECHO, uses_db="--db" in sys.argv), port=0)

"""The kernel's server, served in process: health, reflection, errors, streams."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from kernel_echo_service import ECHO, SERVICE_NAME, EchoServicer, echo_pb2, echo_pb2_grpc

from kernel.errors import error_info, field_violations, status_details, unpack_details
from kernel.server import ServiceServer, Started, serve
from kernel.service import Binding, Runtime, ServiceDefinition
from kernel.settings import load_settings
from tests.support.tokens import as_user

pytestmark = pytest.mark.integration

USER = as_user("u_1", "tips.read")


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[ServiceServer]:
    srv = ServiceServer(ECHO, load_settings(log_format="text"), port=0)
    await srv.start()
    yield srv
    await srv.stop(grace=0)


@pytest.fixture(scope="module")
async def channel(server: ServiceServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.address) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> echo_pb2_grpc.EchoServiceStub:
    return echo_pb2_grpc.EchoServiceStub(channel)


async def _health(channel: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
    return int(reply.status)


async def test_health_serving_after_build(channel: grpc.aio.Channel) -> None:
    assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
    assert await _health(channel, SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING


async def test_health_not_serving_until_build_returns() -> None:
    building, release = asyncio.Event(), asyncio.Event()

    async def slow_build(runtime: Runtime) -> Sequence[Binding]:
        building.set()
        await release.wait()
        return await ECHO.build(runtime)

    definition = ServiceDefinition(name="echo", build=slow_build, uses_db=False, uses_bus=False)
    srv = ServiceServer(definition, load_settings(), port=0)
    starting = asyncio.create_task(srv.start())
    async with asyncio.timeout(10):
        await building.wait()
    async with grpc.aio.insecure_channel(srv.address) as ch:
        assert await _health(ch) == health_pb2.HealthCheckResponse.NOT_SERVING
        release.set()
        await starting
        assert await _health(ch) == health_pb2.HealthCheckResponse.SERVING
    await srv.stop(grace=0)


async def test_stop_names_a_task_that_ignores_cancellation_and_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A stuck background task costs the shutdown a bounded wait, never a hang."""
    import kernel.server

    monkeypatch.setattr(kernel.server, "TASK_STOP_TIMEOUT_S", 0.5)
    release, running = asyncio.Event(), asyncio.Event()

    async def stubborn() -> None:
        running.set()  # a task cancelled before its first step never runs at all
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # the bug this guards against: a loop that eats its stop

    async def build(runtime: Runtime) -> Sequence[Binding]:
        runtime.spawn(stubborn())
        return await ECHO.build(runtime)

    definition = ServiceDefinition(name="echo", build=build, uses_db=False, uses_bus=False)
    srv = ServiceServer(definition, load_settings(log_format="text"), port=0)
    await srv.start()
    try:
        async with asyncio.timeout(30):
            await running.wait()
        with caplog.at_level(logging.ERROR, logger="tips.server"):
            async with asyncio.timeout(30):
                await srv.stop(grace=0)
        stuck = [r for r in caplog.records if "ignored cancellation" in r.getMessage()]
        assert [getattr(r, "task", None) for r in stuck] == [stubborn.__qualname__]
    finally:
        release.set()


async def test_serve_reports_port_and_stops_on_cancel() -> None:
    ready = Started()
    task = asyncio.create_task(
        serve(ECHO, load_settings(), ready=ready, port=0, handle_signals=False)
    )
    async with asyncio.timeout(10):
        await ready.wait()
    assert ready.server is not None and ready.server.port > 0
    async with grpc.aio.insecure_channel(ready.server.address) as ch:
        reply = await echo_pb2_grpc.EchoServiceStub(ch).Echo(echo_pb2.EchoRequest(message="hi"))
        assert reply.message == "hi"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with grpc.aio.insecure_channel(ready.server.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await echo_pb2_grpc.EchoServiceStub(ch).Echo(echo_pb2.EchoRequest(), timeout=1)
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def test_reflection_lists_services(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = [r async for r in stub.ServerReflectionInfo(iter([request]), timeout=5)]
    names = {s.name for s in responses[0].list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names
    symbol = reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME)
    responses = [r async for r in stub.ServerReflectionInfo(iter([symbol]), timeout=5)]
    assert responses[0].file_descriptor_response.file_descriptor_proto


async def test_unimplemented_names_the_method(stub: echo_pb2_grpc.EchoServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Missing(echo_pb2.EchoRequest(), timeout=5)
    assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert err.value.details() == f"{SERVICE_NAME}/Missing is not implemented yet"


async def test_unknown_method_is_unimplemented(channel: grpc.aio.Channel) -> None:
    call = channel.unary_unary("/tipstest.echo.v1.EchoService/Nope")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(b"", timeout=5)
    assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_invalid_argument_carries_bad_request(stub: echo_pb2_grpc.EchoServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Fail(echo_pb2.FailRequest(kind="invalid"), timeout=5)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(err.value) == {"page_size": "must be between 1 and 100"}
    info = error_info(err.value)
    assert info is not None and info.domain == "tips.app" and info.reason == "INVALID_ARGUMENT"
    assert status_details(err.value).message == err.value.details()


async def test_not_found_carries_resource_info(stub: echo_pb2_grpc.EchoServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Fail(echo_pb2.FailRequest(kind="not_found"), timeout=5)
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    details = unpack_details(status_details(err.value))
    resources = [d for d in details if isinstance(d, error_details_pb2.ResourceInfo)]
    assert resources[0].resource_name == "users/u_1/tips/t_9"


async def test_custom_reason(stub: echo_pb2_grpc.EchoServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Fail(echo_pb2.FailRequest(kind="precondition"), timeout=5)
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(err.value)
    assert info is not None and info.reason == "CONSENT_REQUIRED"


async def test_owner_check(stub: echo_pb2_grpc.EchoServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Fail(echo_pb2.FailRequest(kind="owner"), timeout=5, metadata=USER)
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Fail(echo_pb2.FailRequest(kind="owner"), timeout=5)
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_crash_is_internal_and_leaks_nothing(stub: echo_pb2_grpc.EchoServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Fail(echo_pb2.FailRequest(kind="crash"), timeout=5)
    assert err.value.code() is grpc.StatusCode.INTERNAL
    assert err.value.details() == "internal error"
    assert "hunter2" not in str(err.value.trailing_metadata())


async def test_caller_and_deadline_reach_the_handler(stub: echo_pb2_grpc.EchoServiceStub) -> None:
    reply = await stub.Echo(echo_pb2.EchoRequest(message="x"), timeout=3, metadata=USER)
    assert reply.user == "u_1"
    assert 2.0 < reply.deadline_left <= 3.1  # grpc rounds the deadline up
    assert len(reply.trace_id) == 32
    reply = await stub.Echo(echo_pb2.EchoRequest())
    assert reply.user == "" and reply.deadline_left == -1.0


async def test_trace_continues_from_traceparent(stub: echo_pb2_grpc.EchoServiceStub) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = (("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"),)
    reply = await stub.Echo(echo_pb2.EchoRequest(), timeout=3, metadata=parent)
    assert reply.trace_id == trace_id


async def test_server_streaming(stub: echo_pb2_grpc.EchoServiceStub) -> None:
    replies = [r.message async for r in stub.Stream(echo_pb2.StreamRequest(count=3), timeout=5)]
    assert replies == ["0", "1", "2"]


async def test_server_streaming_error_after_items(stub: echo_pb2_grpc.EchoServiceStub) -> None:
    seen: list[str] = []
    call = stub.Stream(echo_pb2.StreamRequest(count=2, fail_kind="invalid"), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for reply in call:
            seen.append(reply.message)
    assert seen == ["0", "1"]
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(err.value) == {"page_size": "must be between 1 and 100"}


async def test_background_tasks_cancelled_and_cleanups_reversed() -> None:
    order: list[str] = []

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            order.append("task cancelled")
            raise

    async def build(runtime: Runtime) -> Sequence[Binding]:
        runtime.spawn(forever())

        async def first() -> None:
            order.append("first")

        async def second() -> None:
            order.append("second")

        runtime.cleanups.extend([first, second])
        return [
            Binding(
                EchoServicer(runtime),
                echo_pb2_grpc.add_EchoServiceServicer_to_server,
                echo_pb2.DESCRIPTOR.services_by_name["EchoService"],
            )
        ]

    definition = ServiceDefinition(name="echo", build=build, uses_db=False, uses_bus=False)
    srv = ServiceServer(definition, load_settings(), port=0)
    await srv.start()
    await asyncio.sleep(0.05)
    await srv.stop(grace=0)
    assert order == ["task cancelled", "second", "first"]


async def test_cancelled_stream_is_clean(
    stub: echo_pb2_grpc.EchoServiceStub,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    call = stub.Stream(echo_pb2.StreamRequest(count=100_000), timeout=10)
    received = 0
    async for _ in call:
        received += 1
        if received == 3:
            call.cancel()
            break
    await asyncio.sleep(0.3)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "Traceback" not in capfd.readouterr().err  # grpc prints handler crashes raw
    assert (await stub.Echo(echo_pb2.EchoRequest(message="after"), timeout=5)).message == "after"


async def test_health_follows_the_bus_and_the_watcher_stops_with_the_server(
    nats_url: str,
) -> None:
    definition = ServiceDefinition(name="echo", build=ECHO.build, uses_db=False, uses_bus=True)
    settings = load_settings(nats_url=nats_url, log_format="text", health_probe_seconds=0.05)
    srv = ServiceServer(definition, settings, port=0)
    await srv.start()
    watcher = srv.dependency_health
    assert watcher is not None
    async with grpc.aio.insecure_channel(srv.address) as ch:
        await asyncio.sleep(0.3)  # several probes: a connected bus keeps SERVING
        assert await _health(ch) == health_pb2.HealthCheckResponse.SERVING
        assert await _health(ch, SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING
        assert srv.runtime.bus is not None
        await srv.runtime.bus.close()  # as good as NATS gone, for the probe
        for _ in range(200):
            if await _health(ch) == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            await asyncio.sleep(0.05)
        assert await _health(ch, SERVICE_NAME) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert list(watcher.down) == ["NATS"]
    await srv.stop(grace=0)
    assert not srv._tasks  # the watcher was cancelled with the other tasks

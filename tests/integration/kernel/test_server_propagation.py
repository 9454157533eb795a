"""Deadline, trace and identity propagation between two in-process servers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import pytest
from kernel_echo_service import ECHO, echo_pb2, echo_pb2_grpc

from kernel.server import ServiceServer
from kernel.settings import load_settings
from tests.support.tokens import as_user

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def pair() -> AsyncIterator[tuple[ServiceServer, ServiceServer]]:
    settings = load_settings(default_deadline_seconds=7.0)
    front = ServiceServer(ECHO, settings, port=0)
    back = ServiceServer(ECHO, settings, port=0)
    await front.start()
    await back.start()
    yield front, back
    await front.stop(grace=0)
    await back.stop(grace=0)


@pytest.fixture
async def front_stub(
    pair: tuple[ServiceServer, ServiceServer],
) -> AsyncIterator[echo_pb2_grpc.EchoServiceStub]:
    async with grpc.aio.insecure_channel(pair[0].address) as ch:
        yield echo_pb2_grpc.EchoServiceStub(ch)


async def test_inbound_deadline_bounds_the_downstream_call(
    pair: tuple[ServiceServer, ServiceServer], front_stub: echo_pb2_grpc.EchoServiceStub
) -> None:
    request = echo_pb2.RelayRequest(target=pair[1].address)
    reply = await front_stub.Relay(request, timeout=2.0)
    # grpc-timeout travels in whole units, rounded up: allow a little over 2 s.
    assert 1.0 < reply.deadline_left <= 2.05
    assert reply.message == "relayed"


async def test_default_deadline_without_inbound_one(
    pair: tuple[ServiceServer, ServiceServer], front_stub: echo_pb2_grpc.EchoServiceStub
) -> None:
    reply = await front_stub.Relay(echo_pb2.RelayRequest(target=pair[1].address))
    assert 6.0 < reply.deadline_left <= 7.1


async def test_downstream_call_fails_when_inbound_deadline_passes(
    pair: tuple[ServiceServer, ServiceServer], front_stub: echo_pb2_grpc.EchoServiceStub
) -> None:
    request = echo_pb2.RelayRequest(target=pair[1].address, slow_seconds=5.0)
    start = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await front_stub.Relay(request, timeout=0.5)
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 2.0


async def test_downstream_unavailable_is_passed_on(
    front_stub: echo_pb2_grpc.EchoServiceStub,
) -> None:
    request = echo_pb2.RelayRequest(target="127.0.0.1:1")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await front_stub.Relay(request, timeout=5)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    assert err.value.details() == "a downstream call failed: UNAVAILABLE"


async def test_trace_and_caller_forwarded(
    pair: tuple[ServiceServer, ServiceServer], front_stub: echo_pb2_grpc.EchoServiceStub
) -> None:
    metadata = as_user("u_42", "tips.read")
    request = echo_pb2.RelayRequest(target=pair[1].address)
    reply = await front_stub.Relay(request, timeout=5, metadata=metadata)
    assert reply.user == "u_42"
    assert reply.trace_id and reply.trace_id == reply.upstream_trace_id

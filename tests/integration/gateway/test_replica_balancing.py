"""An upstream given as replicas (``ip:port,ip:port``): the edge's calls take turns,
per call, and skip a replica that went away; grpc.aio channels balance too.

Two real grpc.aio servers tell themselves apart by their health status (one
SERVING, one NOT_SERVING), so each answer says which replica gave it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from gateway.h2upstream import UpstreamError
from gateway.upstreams import Upstreams
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

HEALTH = "grpc.health.v1.Health"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _replica(status: int) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health.set("", status)  # type: ignore[arg-type]
    return server, f"127.0.0.1:{port}"


@pytest.fixture
async def replicas() -> AsyncIterator[tuple[grpc.aio.Server, str]]:
    """(the NOT_SERVING replica's server, "serving_address,not_serving_address")."""
    a, a_address = await _replica(SERVING)
    b, b_address = await _replica(NOT_SERVING)
    try:
        yield b, f"{a_address},{b_address}"
    finally:
        await a.stop(0)
        await b.stop(0)


async def test_the_edge_calls_replicas_in_turn_and_skips_one_that_went_away(
    replicas: tuple[grpc.aio.Server, str],
) -> None:
    b, addresses = replicas
    upstreams = Upstreams({}, services={HEALTH: addresses})
    check = upstreams.unary(HEALTH, f"/{HEALTH}/Check", health_pb2.HealthCheckResponse.FromString)
    assert check is not None
    try:
        answers = [
            (await check(health_pb2.HealthCheckRequest(), timeout=10)).status for _ in range(6)
        ]
        assert Counter(answers) == {SERVING: 3, NOT_SERVING: 3}
        assert answers[0] != answers[1]  # per call, not per connection

        await b.stop(0)
        failed = 0
        for _ in range(6):
            try:
                assert (await check(health_pb2.HealthCheckRequest(), timeout=10)).status == SERVING
            except UpstreamError as exc:
                assert exc.code() is grpc.StatusCode.UNAVAILABLE
                failed += 1
        # At most the call that found the replica gone fails; then it is skipped.
        assert failed <= 1
    finally:
        await upstreams.close()


async def test_grpc_aio_channels_balance_over_the_replicas(
    replicas: tuple[grpc.aio.Server, str],
) -> None:
    _, addresses = replicas
    upstreams = Upstreams({"pair": addresses})
    stub = health_pb2_grpc.HealthStub(upstreams.channel("pair"))
    seen: set[int] = set()

    async def both() -> set[int]:
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        seen.add(int(reply.status))
        return seen

    try:
        await eventually(both, lambda statuses: statuses == {SERVING, NOT_SERVING}, within=30)
    finally:
        await upstreams.close()


@pytest.fixture
async def pods() -> AsyncIterator[tuple[str, str, int]]:
    """Two replicas on one port at two loopback addresses, as a headless Service's
    pods are: (the SERVING one's ip, the NOT_SERVING one's ip, the port)."""
    a, a_address = await _replica(SERVING)
    port = int(a_address.rpartition(":")[2])
    b = grpc.aio.server()
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, b)
    b.add_insecure_port(f"127.0.0.2:{port}")
    await b.start()
    await health.set("", NOT_SERVING)
    try:
        yield "127.0.0.1", "127.0.0.2", port
    finally:
        await a.stop(0)
        await b.stop(0)


async def test_the_edge_takes_turns_over_every_address_of_a_dns_name(
    pods: tuple[str, str, int],
) -> None:
    """``dns:///name:port``: every address the name has now; a pod that goes from
    the name's answer stops getting calls at the next lookup."""
    a_ip, b_ip, port = pods
    answer = [f"{a_ip}:{port}", f"{b_ip}:{port}"]
    lookups: list[str] = []

    async def resolve(host: str, asked_port: int) -> list[str]:  # the name's DNS answer: 2 pods
        lookups.append(host)
        assert asked_port == port
        return list(answer)

    # A name the system resolves too (to pod a): the first calls, before our
    # lookup answers, go to the name itself.
    name = f"dns:///localhost:{port}"
    upstreams = Upstreams({}, services={HEALTH: name}, resolve=resolve, resolve_every=0.1)
    check = upstreams.unary(HEALTH, f"/{HEALTH}/Check", health_pb2.HealthCheckResponse.FromString)
    assert check is not None
    try:

        async def statuses(count: int) -> Counter[int]:
            got = [(await check(health_pb2.HealthCheckRequest(), timeout=10)).status]
            got += [
                (await check(health_pb2.HealthCheckRequest(), timeout=10)).status
                for _ in range(count - 1)
            ]
            return Counter(got)

        await eventually(lambda: statuses(2), lambda c: c == {SERVING: 1, NOT_SERVING: 1})
        assert lookups and set(lookups) == {"localhost"}
        answer.remove(f"{b_ip}:{port}")  # pod b leaves the Service
        await eventually(lambda: statuses(4), lambda c: c == {SERVING: 4})
    finally:
        await upstreams.close()


async def test_grpc_aio_channels_take_a_dns_name(replicas: tuple[grpc.aio.Server, str]) -> None:
    _, addresses = replicas
    port = addresses.split(",")[0].rpartition(":")[2]
    upstreams = Upstreams({"named": f"dns:///localhost:{port}"})
    try:
        stub = health_pb2_grpc.HealthStub(upstreams.channel("named"))
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == SERVING
    finally:
        await upstreams.close()

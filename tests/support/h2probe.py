"""A gRPC service over raw bytes, for the tests of our own HTTP/2 ends.

The server's tests (tests/integration/kernel/test_h2server.py) and the edge's
client's (tests/integration/gateway/test_h2upstream.py) call ``test.h2.Probe``:
handlers that take and answer bytes, registered as a generated
``add_XServicer_to_server`` would, and requests that are already bytes
(``Raw``, read back with ``same``). A test module subclasses ``Probe`` with
the handlers only it needs and registers them with ``probe_handler``;
``serving`` starts a ``kernel.h2server.Server`` with them for the server's tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeAlias, TypeVar

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from gateway.h2upstream import Channel
from kernel.h2server import Server
from kernel.tls import peer_name

T = TypeVar("T")

# Every wait is for a condition, with a generous deadline: the machine may be loaded.
WAIT = 30.0
SERVICE_NAME = "test.h2.Probe"
SERVICE = f"/{SERVICE_NAME}/"
Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class Raw:
    """A request that is already bytes (h2upstream only calls SerializeToString)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:
        return self.data


def same(data: bytes) -> bytes:
    return data


class Probe:
    """Handlers over raw bytes; what each call saw is kept for the test to read.

    Calls that wait are keyed by their request: ``started[key]`` is set when
    the handler runs, ``cancelled[key]`` when it sees CancelledError,
    ``finished[key]`` when its context's done callback ran.
    """

    failure = "it failed: 100% é"  # what ``fail`` aborts with

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}
        self.started: defaultdict[bytes, asyncio.Event] = defaultdict(asyncio.Event)
        self.cancelled: defaultdict[bytes, asyncio.Event] = defaultdict(asyncio.Event)
        self.finished: defaultdict[bytes, asyncio.Event] = defaultdict(asyncio.Event)

    def _track(self, key: bytes, context: Context) -> None:
        context.add_done_callback(lambda _: self.finished[key].set())
        self.started[key].set()

    # unary-unary

    async def echo(self, request: bytes, context: Context) -> bytes:
        self.seen = {
            "metadata": list(context.invocation_metadata() or ()),
            "peer": context.peer(),
            "peer_name": peer_name(context),
            "auth": context.auth_context(),
        }
        context.add_done_callback(lambda _: self.finished[b"echo"].set())
        await context.send_initial_metadata((("x-first", "one"), ("x-raw-bin", b"\x00\xff")))
        context.set_trailing_metadata((("x-last", "two"), ("x-trail-bin", b"\x00\xff")))
        return request

    async def forever(self, request: bytes, context: Context) -> bytes:
        """Never answers: the call ends by its deadline, a reset or the server's stop."""
        self._track(request, context)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled[request].set()
            raise
        raise AssertionError("never set")

    async def sized(self, request: bytes, context: Context) -> bytes:
        return b"z" * int(request.decode())

    async def fail(self, request: bytes, context: Context) -> bytes:
        info = error_details_pb2.ErrorInfo(reason="PROBE_FAILED", domain="tips.test")
        status = status_pb2.Status(code=grpc.StatusCode.FAILED_PRECONDITION.value[0])
        status.message = self.failure
        status.details.add().Pack(info)
        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            self.failure,
            trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
        )
        raise AssertionError("abort raises")

    # unary-stream

    async def many(self, request: bytes, context: Context) -> AsyncIterator[bytes]:
        for i in range(int(request.decode())):
            yield b"%d" % i


def probe_handler(
    probe: Probe,
    *,
    unary: Iterable[str] = (),
    server_streams: Iterable[str] = (),
    client_streams: Iterable[str] = (),
    bidi: Iterable[str] = (),
) -> grpc.GenericRpcHandler:
    """``test.h2.Probe`` with the named methods of ``probe``, by call shape."""
    shapes: list[tuple[Iterable[str], Callable[..., grpc.RpcMethodHandler]]] = [
        (unary, grpc.unary_unary_rpc_method_handler),
        (server_streams, grpc.unary_stream_rpc_method_handler),
        (client_streams, grpc.stream_unary_rpc_method_handler),
        (bidi, grpc.stream_stream_rpc_method_handler),
    ]
    methods = {name: make(getattr(probe, name)) for names, make in shapes for name in names}
    return grpc.method_handlers_generic_handler(SERVICE_NAME, methods)


@contextlib.asynccontextmanager
async def serving(
    handler: grpc.GenericRpcHandler,
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ssl_context: ssl.SSLContext | None = None,
    extra: Sequence[Callable[[Server], None]] = (),
    **limits: Any,
) -> AsyncIterator[tuple[Server, int]]:
    """A started ``kernel.h2server.Server`` with ``handler`` on a free port of
    127.0.0.1 (TLS with ``ssl_context``); ``extra`` adds more servicers,
    ``limits`` are the Server's keyword arguments. Yields the server and its
    port; stops it (no grace) on the way out."""
    server = Server(interceptors, **limits)
    server.add_generic_rpc_handlers((handler,))
    for add in extra:
        add(server)
    if ssl_context is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", ssl_context)
    assert port > 0
    await server.start()
    try:
        yield server, port
    finally:
        await within(server.stop(None), "the server to stop")


async def edge_call(channel: Channel, method: str, data: bytes, **kwargs: Any) -> Any:
    """A unary call of ``test.h2.Probe`` from the edge's own client."""
    return await channel.unary(SERVICE + method, same)(Raw(data), **kwargs)


async def until(what: str, check: Callable[[], bool]) -> None:
    """Wait for ``check`` to hold (polled every 10 ms), at most ``WAIT``."""
    deadline = asyncio.get_running_loop().time() + WAIT
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def within(awaitable: Awaitable[T], what: str) -> T:
    try:
        async with asyncio.timeout(WAIT):
            return await awaitable
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")

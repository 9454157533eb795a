"""The gRPC services behind the edge and their health (``/readyz``).

Transcoded calls of every shape go over the edge's own HTTP/2 client
(``gateway.h2upstream``: a quarter of grpc.aio's CPU per unary call, and a
streamed request's early answer is its answer); health checks and the
screens' stubs use grpc.aio channels. Both kinds connect lazily, one
connection per upstream address, with the same TLS identity and server-name
check. An upstream given as replicas (``ip:port,ip:port``) gets its calls in
turn, per call; a replica whose connection just failed is skipped while its
backoff lasts. An upstream given as ``dns:///host:port`` (a Kubernetes
headless Service) gets its calls in turn over every address the name has,
looked up again every ``RESOLVE_SECONDS`` (one ``NameLookup`` per name,
shared by its calls' ``ResolvedRoundRobin``); grpc.aio channels balance over
the same name themselves (round_robin). Connections to an address that left
the name stay open, idle, until the Upstreams close.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway import h2upstream
from kernel.settings import SERVICE_NAMES, Settings
from kernel.tls import client_ssl_context, grpc_target, secure_channel

_SERVING = health_pb2.HealthCheckResponse.SERVING
DNS = "dns:///"
RESOLVE_SECONDS = 10.0  # how stale a replica list may get (pods come and go)
log = logging.getLogger(__name__)
# host, port -> the addresses ("ip:port") a name has now
Resolver = Callable[[str, int], Awaitable[list[str]]]


class Upstreams:
    """One channel per upstream address, opened lazily, closed by ``close``.

    ``addresses`` names the upstreams ``/readyz`` checks (a mesh service name
    or a full gRPC service name). A transcoded call finds its address by full
    service name: ``services`` first, then the mesh's rule (``tips.<name>.v1.*``
    goes to ``<name>``'s address) when ``mesh`` is set, then ``default``.
    """

    def __init__(
        self,
        addresses: Mapping[str, str],
        *,
        services: Mapping[str, str] | None = None,
        default: str | None = None,
        mesh: bool = False,
        settings: Settings | None = None,
        resolve: Resolver | None = None,
        resolve_every: float = RESOLVE_SECONDS,
    ) -> None:
        self.addresses = dict(addresses)
        self._resolve = resolve or resolve_addresses
        self._resolve_every = resolve_every
        self._lookups: dict[str, NameLookup] = {}  # one per dns:/// address
        self.settings = settings
        # address (each replica's too) -> the service name its certificate must carry
        self._names = {address: name for name, address in self.addresses.items()}
        for name, address in self.addresses.items():
            self._names.update((replica, name) for replica in _replicas(address))
        self.services = dict(services or {})
        self.default = default
        self.mesh = mesh
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._h2: dict[str, h2upstream.Channel] = {}
        self._calls: dict[tuple[str, str], Any] = {}
        self._ssl: ssl.SSLContext | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Upstreams:
        return cls(
            {name: settings.addr_of(name) for name in SERVICE_NAMES}, mesh=True, settings=settings
        )

    def channel(self, name: str) -> grpc.aio.Channel:
        """The channel of a named upstream (``addresses``) or of an address."""
        return self._channel_to(self.addresses.get(name, name))

    def _channel_to(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            if self.settings is None:
                target, options = grpc_target(address)
                channel = grpc.aio.insecure_channel(target, options=options)
            else:
                # An address no upstream is named for: its host is the name to check.
                name = self._names.get(address, address.rpartition(":")[0])
                channel = secure_channel(address, self.settings, server_name=name)
            self._channels[address] = channel
        return channel

    def _h2_to(self, address: str) -> h2upstream.Channel:
        channel = self._h2.get(address)
        if channel is None:
            host, _, port = address.rpartition(":")
            context = None
            if self.settings is not None:
                if self._ssl is None:
                    self._ssl = client_ssl_context(self.settings)
                context = self._ssl
            name = self._names.get(address, host)
            channel = h2upstream.Channel(
                host.strip("[]"), int(port), ssl_context=context, server_name=name
            )
            self._h2[address] = channel
        return channel

    def address_of_service(self, full_name: str) -> str | None:
        """Where the gRPC service ``full_name`` (``pkg.v1.Service``) is served."""
        found = self.services.get(full_name)
        if found is not None:
            return found
        if self.mesh:
            parts = full_name.split(".")
            if len(parts) >= 4 and parts[0] == "tips" and parts[1] in self.addresses:
                return self.addresses[parts[1]]
        return self.default

    def unary(
        self, service: str, path: str, response: Callable[[bytes], Any]
    ) -> Callable[..., h2upstream.Call] | None:
        """A unary call on ``path`` (``/pkg.Service/Method``), used as grpc.aio's
        multicallables are (``call(request, timeout=, metadata=)``); None: no upstream."""
        return self._h2_call(service, path, response, "unary")

    def server_stream(
        self, service: str, path: str, response: Callable[[bytes], Any]
    ) -> Callable[..., h2upstream.Call] | None:
        """A server-streaming call on ``path`` (``await call.read()``); None: no upstream."""
        return self._h2_call(service, path, response, "server_stream")

    def _h2_call(
        self, service: str, path: str, response: Callable[[bytes], Any], kind: str
    ) -> Callable[..., h2upstream.Call] | None:
        def build(address: str) -> tuple[Callable[[], bool], Any]:
            channel = self._h2_to(address)
            return channel.available, channel.unary(path, response)

        return self._cached(service, (path, kind), build)  # type: ignore[no-any-return]

    def client_stream(
        self, service: str, path: str, response: Callable[[bytes], Any], *, bidi: bool
    ) -> Callable[..., h2upstream.StreamCall] | None:
        """A client-streaming (or, with ``bidi``, bidi) call on ``path``:
        ``call(timeout=, metadata=)``, then ``write``s and ``done_writing``; None: no upstream."""

        def build(address: str) -> tuple[Callable[[], bool], Any]:
            channel = self._h2_to(address)
            return channel.available, channel.stream(path, response)

        kind = "stream_stream" if bidi else "stream_unary"
        return self._cached(service, (path, kind), build)  # type: ignore[no-any-return]

    def _cached(
        self,
        service: str,
        key: tuple[str, str],
        build: Callable[[str], tuple[Callable[[], bool], Any]],
    ) -> Any:
        """The call for ``key``, built once for the service's address (or a turn-taker
        over its replicas); None: no upstream.

        Cached: building a multicallable per request costs more than the call.
        """
        call = self._calls.get(key)
        if call is None:
            address = self.address_of_service(service)
            if address is None:
                return None
            replicas = _replicas(address)
            if address.startswith(DNS):
                call = self._resolved(address, build)
            elif len(replicas) == 1:
                call = build(replicas[0])[1]
            else:
                self._fail_over(replicas)
                call = RoundRobin([build(replica) for replica in replicas])
            self._calls[key] = call
        return call

    def _fail_over(self, replicas: list[str]) -> None:
        """A call that cannot reach its replica (it stopped or is restarting: the
        connect fails, or is backing off) goes to the next one that can be tried."""
        channels = [self._h2_to(replica) for replica in replicas]
        if channels[0].elsewhere is not None:
            return
        turn = itertools.count()

        def elsewhere(failed: h2upstream.Channel) -> h2upstream.Channel | None:
            for _ in channels:
                channel = channels[next(turn) % len(channels)]
                if channel is not failed and channel.available():
                    return channel
            return None

        for channel in channels:
            channel.elsewhere = elsewhere

    def _resolved(
        self, address: str, build: Callable[[str], tuple[Callable[[], bool], Any]]
    ) -> ResolvedRoundRobin:
        host, _, port = address.removeprefix(DNS).rpartition(":")
        name = self._names.get(address, host)

        def build_at(replica: str) -> tuple[Callable[[], bool], Any]:
            self._names.setdefault(replica, name)  # each address proves the service's name
            return build(replica)

        lookup = self._lookups.get(address)
        if lookup is None:
            lookup = NameLookup(host, int(port), self._resolve, self._resolve_every)
            self._lookups[address] = lookup
        return ResolvedRoundRobin(lookup, build_at)

    async def health_of(self, name: str, deadline_s: float) -> str:
        """The service's overall health status name, or the RPC error's code name."""
        stub = health_pb2_grpc.HealthStub(self.channel(name))
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=deadline_s)
        except grpc.aio.AioRpcError as exc:
            return str(exc.code().name)
        status: str = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return status

    async def health(self, deadline_s: float) -> dict[str, str]:
        """Every upstream's status, checked in parallel."""
        names = list(self.addresses)
        results = await asyncio.gather(*(self.health_of(n, deadline_s) for n in names))
        return dict(zip(names, results, strict=True))

    async def close(self) -> None:
        lookups, self._lookups = list(self._lookups.values()), {}
        await asyncio.gather(*(lookup.close() for lookup in lookups))
        channels, self._channels = list(self._channels.values()), {}
        h2, self._h2 = list(self._h2.values()), {}
        self._calls = {}
        await asyncio.gather(*(ch.close() for ch in channels), *(ch.close() for ch in h2))


class RoundRobin:
    """Calls one replica after the other; one whose connection just failed is skipped
    while its backoff lasts, unless all are (the next then says why it fails)."""

    def __init__(self, calls: list[tuple[Callable[[], bool], Any]]) -> None:
        self._calls = calls
        self._next = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        count = len(self._calls)
        for _ in range(count):
            available, call = self._calls[self._next % count]
            self._next += 1
            if available():
                return call(*args, **kwargs)
        _, call = self._calls[self._next % count]
        self._next += 1
        return call(*args, **kwargs)


class NameLookup:
    """Every address a DNS name has, looked up now and then (one loop per name).

    A lookup that fails or finds nothing keeps the addresses it had.
    ``generation`` counts the changes, so the calls taking turns over them
    rebuild their turns when it moves.
    """

    def __init__(self, host: str, port: int, resolve: Resolver, every: float) -> None:
        self.host, self.port = host, port
        self._resolve = resolve
        self._every = every
        self.addresses: tuple[str, ...] = ()
        self.generation = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._refresh())

    async def _refresh(self) -> None:
        while True:
            try:
                found = tuple(sorted(set(await self._resolve(self.host, self.port))))
            except Exception as exc:
                log.warning("upstream lookup failed", extra={"host": self.host, "error": repr(exc)})
            else:
                if found and found != self.addresses:
                    self.addresses = found
                    self.generation += 1
                    log.info("upstream replicas", extra={"host": self.host, "addresses": found})
            await asyncio.sleep(self._every)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class ResolvedRoundRobin:
    """``RoundRobin`` over the addresses a ``NameLookup`` has now.

    Until the first lookup answers, calls go to ``host:port`` itself (one
    connection, to whichever address the system resolver gives).
    """

    def __init__(
        self, lookup: NameLookup, build: Callable[[str], tuple[Callable[[], bool], Any]]
    ) -> None:
        self._lookup = lookup
        self._build = build
        self._turns = RoundRobin([build(f"{lookup.host}:{lookup.port}")])
        self._generation = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        lookup = self._lookup
        lookup.start()
        if lookup.generation != self._generation:
            try:
                self._turns = RoundRobin([self._build(a) for a in lookup.addresses])
            except Exception as exc:  # keep the turns it had: the next change tries again
                log.warning("upstream replicas not used", extra={"error": repr(exc)})
            self._generation = lookup.generation
        return self._turns(*args, **kwargs)


async def resolve_addresses(host: str, port: int) -> list[str]:
    """Every address ``host`` has, as ``ip:port`` (``[ip]:port`` for IPv6)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found = []
    for _family, _type, _proto, _name, sockaddr in infos:
        ip = str(sockaddr[0])
        found.append(f"[{ip}]:{port}" if ipaddress.ip_address(ip).version == 6 else f"{ip}:{port}")
    return found


def _replicas(address: str) -> list[str]:
    return [a.strip() for a in address.split(",") if a.strip()]


def not_serving(statuses: Mapping[str, str]) -> dict[str, str]:
    """The upstreams whose status is not SERVING."""
    return {
        name: status
        for name, status in statuses.items()
        if status != health_pb2.HealthCheckResponse.ServingStatus.Name(_SERVING)
    }

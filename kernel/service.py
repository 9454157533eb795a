"""How a service describes itself to the kernel.

Every service module exposes one ``SERVICE: ServiceDefinition``. The kernel's
bootstrap (``kernel.server.serve``) builds the runtime (settings, DB, bus),
calls ``build`` to get the servicers, serves them with health and reflection,
and drains on SIGTERM. ``tips migrate`` uses ``migrations_dir``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf.descriptor import ServiceDescriptor

if TYPE_CHECKING:
    import grpc

    from kernel.bus import Bus
    from kernel.db import Database
    from kernel.settings import Settings


@dataclass(frozen=True)
class Binding:
    """One gRPC service implementation and how to add it to a server."""

    servicer: object
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    descriptor: ServiceDescriptor

    @property
    def full_name(self) -> str:
        return self.descriptor.full_name


@dataclass
class Runtime:
    """What a running service has: its settings and connections.

    ``spawn`` starts a background task (consumers, relays) that the kernel
    cancels on shutdown.
    """

    settings: Settings
    db: Database | None = None
    bus: Bus | None = None
    spawn: Callable[[Coroutine[Any, Any, None]], None] = field(default=lambda coro: None)
    # Cleanups run in reverse order at shutdown, after the server stopped.
    cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


@dataclass(frozen=True)
class ServiceDefinition:
    """A service as the kernel sees it."""

    name: str
    build: Callable[[Runtime], Awaitable[Sequence[Binding]]]
    uses_db: bool = True
    uses_bus: bool = True
    # Alembic scripts of this service's schema (one history per service).
    migrations_dir: Path | None = None
    # JetStream streams this service owns (declared at start, idempotently).
    streams: Sequence[Any] = ()


def bind(servicer: object, grpc_module: Any, pb2_module: Any, service_name: str) -> Binding:
    """Binding for a servicer of ``service_name`` from its generated modules.

    ``bind(EventsServicer(...), events_service_pb2_grpc, events_service_pb2, "EventsService")``
    """
    descriptor = pb2_module.DESCRIPTOR.services_by_name[service_name]
    add_to_server = getattr(grpc_module, f"add_{service_name}Servicer_to_server")
    return Binding(servicer=servicer, add_to_server=add_to_server, descriptor=descriptor)

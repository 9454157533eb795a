"""Server bootstrap: one way to run every service.

``run(SERVICE)`` (what ``tips serve NAME`` calls) configures logs and traces,
listens at once with health NOT_SERVING, connects the DB and the bus (retried
with backoff, bounded by ``startup_timeout_seconds``), declares the service's
streams, calls ``definition.build(runtime)``, adds its servicers, reflection
and health, then reports SERVING; from then on health follows the DB and the
bus (``kernel.dependency_health``: NOT_SERVING while either is down). On
SIGTERM/SIGINT it drains: health goes
NOT_SERVING, new RPCs are refused, in-flight RPCs get ``drain_seconds`` to
finish, background tasks are cancelled, cleanups run in reverse, the bus then
the DB are closed, and the process exits 0. Invalid settings exit 2 and an
unreachable dependency exits 1, each with one line on stderr.

Servicers are added after the server started (so health answers while the
DB is still being reached): ``kernel.h2server.Server`` looks a call's handler
up when the call arrives, so they go straight to it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

from kernel import tls
from kernel.access import CallerPolicy, callers_table
from kernel.clients import channel, close_channels
from kernel.dependency_health import DependencyHealth, Probe, bus_probe, db_probe
from kernel.h2server import Server
from kernel.interceptors import ServerInterceptor
from kernel.logging import configure_logging, redact_text
from kernel.metrics import MetricsEndpointError
from kernel.service import Binding, Runtime, ServiceDefinition
from kernel.settings import DEFAULT_PORTS, Settings, SettingsError, load_settings
from kernel.telemetry import configure_telemetry, shutdown_telemetry
from kernel.tokens import verifier_from_settings

log = logging.getLogger("tips.server")
T = TypeVar("T")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
HEALTH_SERVICE = "grpc.health.v1.Health"
# A background task gets this long to finish once cancelled at shutdown.
TASK_STOP_TIMEOUT_S = 10.0

# One limit on request metadata, so a request the gateway lets through (its caps
# leave room for its own headers) always arrives.
MAX_METADATA_BYTES = 16 * 1024


# The collector's thresholds once a service runs (CPython's: 700, 10, 10). A
# young collection every 700 allocations, and full ones walking a heap that is
# mostly modules, took 4% of the recommender's CPU under load and paused it
# for up to 280 ms (decision 38). The middle generation is collected every
# fourth young collection, not every eleventh: each of its collections walks
# what the young ones kept since the last (caches that grow with users), and
# at 10 that paused the recommender for 122-137 ms under load (decision 41).
GC_THRESHOLDS = (20_000, 3, 10)


def settle_heap() -> None:
    """What a started service keeps for good (modules, the catalog, models) leaves
    the collector's view (``gc.freeze``), and young collections come less often.
    Called once the process serves; a test process starting many servers does not."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class StartupError(RuntimeError):
    """The service could not start (dependency unreachable, port busy)."""


async def connect_with_retry(what: str, connect: Callable[[], Awaitable[T]], limit: float) -> T:
    """Call ``connect`` until it succeeds, backing off; StartupError after ``limit`` seconds."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + limit
    delay, last = 0.2, "no attempt"
    while (left := give_up - loop.time()) > 0:
        try:
            async with asyncio.timeout(left):
                return await connect()
        except TimeoutError:
            last = "timed out"
        except Exception as exc:
            last = redact_text(f"{type(exc).__name__}: {exc}")
            log.warning("cannot reach %s yet, retrying", what, extra={"error": last})
        await asyncio.sleep(max(0.0, min(delay, give_up - loop.time())))
        delay = min(delay * 2, 5.0)
    raise StartupError(f"could not reach {what} within {limit:g}s ({last})")


class ServiceServer:
    """One running service: ``await start()``, ``port``, ``await stop()``."""

    def __init__(
        self, definition: ServiceDefinition, settings: Settings, *, port: int | None = None
    ) -> None:
        self.definition = definition
        self.settings = settings
        self._requested_port = port
        self.port = 0
        self.runtime = Runtime(settings=settings, spawn=self._spawn)
        self.service_names: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._health = HealthServicer()
        self._server: Server | None = None
        self._stopped = False
        self._callers = CallerPolicy(verify_peers=not settings.insecure)
        # Users' tokens are checked against the auth service's keys (its GetJwks,
        # or TIPS_JWKS_URL), fetched on first use.
        self._verifier = verifier_from_settings(settings, lambda: channel(settings, "auth"))
        self.dependency_health: DependencyHealth | None = None

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    def _listen_port(self) -> int:
        if self._requested_port is not None:
            return self._requested_port  # 0: any free port
        if self.settings.port:
            return self.settings.port
        if self.definition.name not in DEFAULT_PORTS:
            raise SettingsError(
                f"invalid configuration: TIPS_PORT: no default port for {self.definition.name!r}"
            )
        return DEFAULT_PORTS[self.definition.name]

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    async def start(self) -> None:
        """Listen (NOT_SERVING), connect, build, then report SERVING."""
        name, settings = self.definition.name, self.settings
        configure_logging(settings, name)
        try:
            configure_telemetry(settings, name)
        except MetricsEndpointError as exc:
            raise StartupError(str(exc)) from None
        tls.warn_if_insecure(settings, name)
        interceptor = ServerInterceptor(callers=self._callers, verifier=self._verifier)
        server = Server([interceptor], max_metadata_bytes=MAX_METADATA_BYTES)
        self._server = server
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        await self._health.set("", NOT_SERVING)
        target = f"{settings.host}:{self._listen_port()}"
        context = tls.server_ssl_context(settings)  # bad TLS settings: exit 2, not "port"
        try:
            if context is None:
                self.port = server.add_insecure_port(target)
            else:
                self.port = server.add_secure_port(target, context)
        except RuntimeError as exc:
            raise StartupError(f"cannot listen on {target}: {exc}") from None
        if not self.port:
            raise StartupError(f"cannot listen on {target}")
        await server.start()
        log.info("listening", extra={"address": self.address})
        await self._connect()
        try:
            async with asyncio.timeout(settings.startup_timeout_seconds):
                bindings = await self.definition.build(self.runtime)
        except TimeoutError:
            raise StartupError(
                f"build did not finish within {settings.startup_timeout_seconds:g}s"
            ) from None
        await self._bind(server, bindings)
        log.info("serving", extra={"address": self.address, "port": self.port})
        self._watch_dependencies()

    def _watch_dependencies(self) -> None:
        """From now on, health is NOT_SERVING while the DB or the bus is down."""
        probes: list[Probe] = []
        if self.runtime.db is not None:
            probes.append(db_probe(self.runtime.db))
        if self.runtime.bus is not None:
            probes.append(bus_probe(self.runtime.bus))
        if not probes:
            return
        self.dependency_health = DependencyHealth(
            self._health,
            self.service_names,
            probes,
            interval=self.settings.health_probe_seconds,
            timeout=self.settings.health_probe_timeout_seconds,
        )
        self._spawn(self.dependency_health.run())

    async def _connect(self) -> None:
        timeout = self.settings.startup_timeout_seconds
        name, settings = self.definition.name, self.settings
        if self.definition.uses_db:
            from kernel.db import Database  # only services with a DB need it

            self.runtime.db = await connect_with_retry(
                "PostgreSQL", lambda: Database.connect(settings, name), timeout
            )
        if self.definition.uses_bus:
            from kernel.bus import Bus  # only services on the bus need it

            bus = await connect_with_retry("NATS", lambda: Bus.connect(settings, name), timeout)
            self.runtime.bus = bus
            async with asyncio.timeout(timeout):
                await bus.ensure_streams(self.definition.streams)

    async def _bind(self, server: Server, bindings: Sequence[Binding]) -> None:
        for binding in bindings:
            binding.add_to_server(binding.servicer, server)  # type: ignore[arg-type]
        self.service_names = [b.full_name for b in bindings]
        self._callers.add(callers_table(b.descriptor for b in bindings))
        names = [*self.service_names, HEALTH_SERVICE, reflection.SERVICE_NAME]
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            ReflectionServicer(names), server
        )
        for full_name in self.service_names:
            await self._health.set(full_name, SERVING)
        await self._health.set("", SERVING)

    async def stop(self, grace: float | None = None) -> None:
        """Drain and release everything; safe after a failed start."""
        if self._stopped:
            return
        self._stopped = True
        await self._health.enter_graceful_shutdown()
        if self._server is not None:
            drain = self.settings.drain_seconds if grace is None else grace
            log.info("draining", extra={"drain_seconds": drain})
            await self._server.stop(drain)
        await self._stop_tasks()
        for cleanup in reversed(self.runtime.cleanups):
            await self._quietly("cleanup", cleanup)
        if self.runtime.bus is not None:
            await self._quietly("closing the bus", self.runtime.bus.close)
        if self.runtime.db is not None:
            await self._quietly("closing the database", self.runtime.db.close)
        await self._quietly("closing the key cache", self._verifier.close)
        log.info("stopped")

    async def _stop_tasks(self) -> None:
        """Cancel the background tasks; one that will not stop is named, not waited for."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _, stuck = await asyncio.wait(tasks, timeout=TASK_STOP_TIMEOUT_S)
        for task in stuck:
            log.error(
                "background task ignored cancellation; shutting down without it",
                extra={"task": task.get_coro().__qualname__},  # type: ignore[union-attr]
            )

    async def _quietly(self, what: str, step: Callable[[], Awaitable[None]]) -> None:
        # One failing step must not skip the rest of the shutdown.
        try:
            await step()
        except Exception:
            log.exception("error while %s", what)


class Started(asyncio.Event):
    """A ``ready`` event that also hands over the running server (its port)."""

    server: ServiceServer | None = None


async def serve(
    definition: ServiceDefinition,
    settings: Settings,
    *,
    ready: asyncio.Event | None = None,
    port: int | None = None,
    handle_signals: bool = True,
    settle: bool = False,
) -> None:
    """Run ``definition`` until SIGTERM/SIGINT (or cancellation), then drain.

    ``port`` overrides the settings (0: any free port; read it from a
    ``Started`` event's ``server.port``); ``settle``: ``settle_heap()`` once
    started (what a service process does).
    """
    server = ServiceServer(definition, settings, port=port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        await server.start()
        if settle:
            settle_heap()
        if isinstance(ready, Started):
            ready.server = server
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await server.stop()


def run(
    definition: ServiceDefinition, settings: Settings | None = None, *, port: int | None = None
) -> None:
    """Process entry point: serve until a signal; exit non-zero on bad start."""
    try:
        if settings is None:
            settings = load_settings()
        if not settings.service:
            settings = settings.model_copy(update={"service": definition.name})
        tls.material(settings)  # no certificates and not insecure: exit 2 before anything starts
        asyncio.run(_main(definition, settings, port))
    except SettingsError as exc:
        print(f"tips {definition.name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except StartupError as exc:
        print(f"tips {definition.name}: cannot start: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        shutdown_telemetry()


async def _main(definition: ServiceDefinition, settings: Settings, port: int | None) -> None:
    try:
        await serve(definition, settings, port=port, settle=True)
    finally:
        await close_channels()

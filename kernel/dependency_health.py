"""gRPC health that follows the service's dependencies.

Once a service is SERVING, ``DependencyHealth.run`` (a background task the
kernel's server starts) probes its dependencies every ``interval`` seconds:
PostgreSQL with a ``SELECT 1`` through the service's pool (bounded by
``timeout``, generous so a loaded machine does not flap), NATS by whether the
client is connected (nats-py reconnects by itself). While any is down, the
health status of ``""`` and of every served service is NOT_SERVING; when all
are back, SERVING. One log line per transition, never per probe.

A drain wins: once the health servicer entered graceful shutdown its
``set`` is a no-op, and the server cancels this task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from grpc_health.v1 import health_pb2

from kernel.logging import redact_text

if TYPE_CHECKING:
    from kernel.bus import Bus
    from kernel.db import Database

__all__ = ["DependencyHealth", "HealthStatus", "Probe", "bus_probe", "db_probe"]

log = logging.getLogger("tips.health")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class Probe:
    """A dependency check: ``check()`` returns normally when ``name`` is up, raises when down."""

    name: str
    check: Callable[[], Awaitable[None]]


class HealthStatus(Protocol):
    """What the watcher needs of a health servicer (grpc_health's async one)."""

    async def set(self, service: str, status: Any) -> None: ...


def db_probe(db: Database) -> Probe:
    """PostgreSQL: ``SELECT 1`` through the pool (``kernel.db.Database.ping``)."""
    return Probe("PostgreSQL", db.ping)


def bus_probe(bus: Bus) -> Probe:
    """NATS: the client is connected (``kernel.bus.Bus.is_connected``)."""

    async def check() -> None:
        if not bus.is_connected:
            raise ConnectionError("not connected (reconnecting)")

    return Probe("NATS", check)


class DependencyHealth:
    """Sets ``names`` (and ``""``) NOT_SERVING while a probe fails, SERVING when all pass."""

    def __init__(
        self,
        health: HealthStatus,
        names: Sequence[str],
        probes: Sequence[Probe],
        *,
        interval: float = 1.0,
        timeout: float = 5.0,
    ) -> None:
        self._health = health
        self._names = ["", *(n for n in names if n)]
        self._probes = list(probes)
        self.interval = interval
        self.timeout = timeout
        self.down: dict[str, str] = {}  # dependency -> why, as of the last check

    async def _probe(self, probe: Probe) -> str | None:
        """None when ``probe`` passed, else why it failed."""
        try:
            async with asyncio.timeout(self.timeout):
                await probe.check()
        except TimeoutError:
            return f"no answer within {self.timeout:g}s"
        except Exception as exc:
            return redact_text(f"{type(exc).__name__}: {exc}")[:300]
        return None

    async def check(self) -> bool:
        """Probe every dependency once and update health; True when all are up."""
        results = await asyncio.gather(*(self._probe(p) for p in self._probes))
        down = {p.name: why for p, why in zip(self._probes, results, strict=True) if why}
        was_down = bool(self.down)
        if down and not was_down:
            log.warning(
                "dependency down: health NOT_SERVING",
                extra={"dependencies": sorted(down), "errors": down},
            )
        elif was_down and not down:
            log.info("dependencies back: health SERVING", extra={"dependencies": sorted(self.down)})
        elif down.keys() != self.down.keys():
            log.warning(
                "dependencies down changed", extra={"dependencies": sorted(down), "errors": down}
            )
        self.down = down
        if bool(down) != was_down:
            status = NOT_SERVING if down else SERVING
            for name in self._names:
                await self._health.set(name, status)
        return not down

    async def run(self) -> None:
        """Check every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            await self.check()

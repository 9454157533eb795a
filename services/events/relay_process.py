"""The outbox relay in a child process of the events service: ingest and publishing on two cores.

Publishing to JetStream costs about as much Python CPU per signal as
ingesting it (nats-py encodes each message and parses each ack); in one
process the two share one core. ``RelaySupervisor`` (a background task of
the service) runs ``python -m services.events.relay_process`` and:

- sends it the service's settings as one JSON line on its stdin (not argv
  or the environment: they may hold a database password), then keeps the
  pipe open: the child exits when it reads EOF, so it never outlives the
  service, even one killed with SIGKILL;
- restarts it with backoff if it dies; while it is down the rows wait in
  the outbox (ingest pushes back at the backlog limit), nothing is lost;
- on shutdown closes the pipe, waits for the child to finish its round,
  then terminates it.

The child also stops on SIGTERM/SIGINT (``make up`` signals the whole
process group). Several relays are safe: the advisory lock lets one publish
at a time, so a stale child overlapping a new one only waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

from kernel.bus import Bus
from kernel.db import Database
from kernel.logging import configure_logging
from kernel.outbox import OutboxRelay
from services.events import store
from services.events.settings import EventsSettings

log = logging.getLogger(__name__)

MODULE = "services.events.relay_process"


def make_relay(db: Database, bus: Bus, settings: EventsSettings) -> OutboxRelay:
    """The kernel's relay, with the larger batches signals arrive in."""
    return OutboxRelay(db, bus, store.outbox, batch=settings.events_relay_batch)


class RelaySupervisor:
    """Keeps one relay child process running until cancelled."""

    def __init__(self, settings: EventsSettings, *, stop_timeout: float = 10.0) -> None:
        self.settings = settings
        self.stop_timeout = stop_timeout
        self.process: asyncio.subprocess.Process | None = None
        self.started = asyncio.Event()  # set once a child has been started (tests)

    async def run(self) -> None:
        backoff = 0.5
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                code: int | str = await self._run_child()
            except OSError as exc:  # could not even start it (fork, exec)
                code = repr(exc)
            if loop.time() - started > 60:
                backoff = 0.5  # it ran fine for a while: this is a new failure
            log.warning(
                "outbox relay process exited, restarting",
                extra={"code": code, "delay": backoff},
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    async def _run_child(self) -> int:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", MODULE, stdin=asyncio.subprocess.PIPE
        )
        self.process = proc
        assert proc.stdin is not None
        try:
            with contextlib.suppress(ConnectionError):  # it died at once: wait() says how
                proc.stdin.write(self.settings.to_json_with_secrets().encode() + b"\n")
                await proc.stdin.drain()
            self.started.set()
            return await proc.wait()
        finally:
            if proc.returncode is None:
                await asyncio.shield(self._stop(proc))

    async def _stop(self, proc: asyncio.subprocess.Process) -> None:
        """EOF first (the child ends its round and closes), then SIGTERM, then SIGKILL."""
        if proc.stdin is not None:
            proc.stdin.close()
        steps: tuple[Callable[[], None], ...] = (lambda: None, proc.terminate, proc.kill)
        for escalate in steps:
            with contextlib.suppress(ProcessLookupError):
                escalate()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.stop_timeout / 2):
                    await proc.wait()
                return


# --- the child ------------------------------------------------------------------------------


async def _read_settings(reader: asyncio.StreamReader) -> EventsSettings:
    line = await reader.readline()
    if not line:
        raise SystemExit("relay process: no settings on stdin")
    data: dict[str, Any] = json.loads(line)
    return EventsSettings(**data)


async def _child_main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    settings = await _read_settings(reader)
    configure_logging(settings, "events-relay")
    task = asyncio.current_task()
    assert task is not None
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)

    async def parent_gone() -> None:
        await reader.read()  # returns at EOF: the service closed the pipe or died
        task.cancel()

    watcher = asyncio.create_task(parent_gone())
    db = await Database.connect(settings, "events")
    bus = await Bus.connect(settings, "events-relay")
    try:
        await make_relay(db, bus, settings).run()
    except asyncio.CancelledError:
        pass  # a round cut short rolls back: its rows are resent, deduped by msg id
    finally:
        watcher.cancel()
        await bus.close()
        await db.close()


def main() -> None:
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(_child_main())


if __name__ == "__main__":
    main()

"""Stopping and starting a test's own PostgreSQL from async code, robustly."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tipsmesh.localinfra import LocalInfraError


async def pg_ctl(step: Callable[[], object], attempts: int = 3) -> None:
    """A blocking pg_ctl step (``server.start``, ``server.stop``) off the loop, again if
    it reported a failure: it sometimes does on a loaded machine, and the tests that
    restart PostgreSQL are about the service, not about pg_ctl."""
    for attempt in range(attempts):
        try:
            await asyncio.to_thread(step)
            return
        except LocalInfraError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.5)

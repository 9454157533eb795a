"""Run the edge: uvicorn on ``settings.gateway_port``, graceful stop on SIGTERM/SIGINT.

uvicorn installs the signal handlers: on SIGTERM it stops accepting, lets
in-flight requests finish (bounded by ``drain_seconds``), runs the lifespan
shutdown (closing upstream channels) and returns, so the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import uvicorn

from gateway.app import create_app
from kernel.logging import configure_logging
from kernel.settings import Settings, SettingsError, load_settings

log = logging.getLogger("tips.gateway")


def build_server(settings: Settings) -> uvicorn.Server:
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.gateway_port,
        lifespan="on",
        log_config=None,  # keep the kernel's structured, redacting handler
        access_log=False,
        timeout_graceful_shutdown=max(1, round(settings.drain_seconds)),
    )
    return uvicorn.Server(config)


def run(settings: Settings | None = None) -> None:
    """Process entry point; exit 2 on bad settings, 1 when the port is busy."""
    try:
        if settings is None:
            settings = load_settings()
    except SettingsError as exc:
        print(f"tips gateway: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings, "gateway")
    server = build_server(settings)
    log.info("listening", extra={"address": f"{settings.host}:{settings.gateway_port}"})
    asyncio.run(server.serve())
    if not server.started:
        # uvicorn logs the bind error itself and returns without serving.
        print(
            f"tips gateway: cannot start: could not listen on "
            f"{settings.host}:{settings.gateway_port}",
            file=sys.stderr,
        )
        raise SystemExit(1)
    log.info("stopped")

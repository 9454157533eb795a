"""Run the edge: uvicorn on ``settings.gateway_port``, graceful stop on SIGTERM/SIGINT.

``python -m gateway`` with no flags serves the product (its descriptor set,
the mesh's addresses), as ``tips serve gateway`` does. With flags it serves
any descriptor set with HTTP rules::

    python -m gateway --descriptor-set FILE --upstream FULL.SERVICE.NAME=HOST:PORT \
        [--upstream ...] [--default-upstream HOST:PORT] --listen HOST:PORT [--no-auth]

uvicorn installs the signal handlers: on SIGTERM it stops accepting, lets
in-flight requests finish (bounded by ``drain_seconds``), runs the lifespan
shutdown (closing upstream channels) and returns, so the process exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn
import uvloop
from starlette.applications import Starlette

from gateway.app import create_app
from gateway.auth import edge_auth_from_settings
from gateway.descriptors import load_image
from gateway.http_protocol import TurnWriteHttpToolsProtocol
from gateway.proxy import EdgeAuth
from gateway.revocations import RevocationFeed, RevokedSessions
from gateway.upstreams import Upstreams
from kernel.logging import configure_logging
from kernel.metrics import MetricsEndpointError
from kernel.settings import Settings, SettingsError, load_settings
from kernel.telemetry import configure_telemetry, shutdown_telemetry

log = logging.getLogger("tips.gateway")


def edge_auth(
    settings: Settings, upstreams: Upstreams, revoked: RevokedSessions | None = None
) -> EdgeAuth:
    """The token check of the product's edge (``gateway.auth``)."""
    return edge_auth_from_settings(settings, upstreams, revoked)


def product_app(settings: Settings, upstreams: Upstreams | None = None) -> Starlette:
    """The product's edge: token check, and revoked sessions followed on the bus."""
    ups = upstreams if upstreams is not None else Upstreams.from_settings(settings)
    revoked = RevokedSessions()
    return create_app(
        settings,
        ups,
        auth=edge_auth(settings, ups, revoked),
        revocations=RevocationFeed(settings, revoked),
    )


def build_server(
    settings: Settings,
    app: Starlette | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
) -> uvicorn.Server:
    if app is None:
        app = product_app(settings)
    config = uvicorn.Config(
        app,
        host=host or settings.host,
        port=settings.gateway_port if port is None else port,
        lifespan="on",
        # Chosen by bench/http_stack.py: see docs/http-stack.md; one write per
        # answer instead of uvicorn's two (gateway/http_protocol.py).
        loop="uvloop",
        http=TurnWriteHttpToolsProtocol,
        log_config=None,  # keep the kernel's structured, redacting handler
        access_log=False,
        # The edge appends the peer to X-Forwarded-For itself: keep the client's header.
        proxy_headers=False,
        timeout_graceful_shutdown=max(1, round(settings.drain_seconds)),
    )
    return uvicorn.Server(config)


def run(
    settings: Settings | None = None,
    app: Starlette | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
) -> None:
    """Process entry point; exit 2 on bad settings, 1 when the port is busy."""
    try:
        if settings is None:
            settings = load_settings()
    except SettingsError as exc:
        print(f"tips gateway: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings, "gateway")
    try:
        configure_telemetry(settings, "gateway")  # read per request (gateway.telemetry)
    except MetricsEndpointError as exc:
        print(f"tips gateway: cannot start: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    try:
        _serve(settings, app, host, port)
    finally:
        shutdown_telemetry()  # the last spans and metrics go out


def _serve(settings: Settings, app: Starlette | None, host: str | None, port: int | None) -> None:
    server = build_server(settings, app, host=host, port=port)
    address = f"{server.config.host}:{server.config.port}"
    log.info("listening", extra={"address": address})
    # uvicorn re-raises the stop signal after a graceful shutdown; with the
    # default handlers that kills the process (-15). A no-op handler keeps
    # the exit status 0 (uvicorn installs its own while serving).
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, lambda *_: None)
    # server.serve() under uvloop: asyncio.run would ignore the config's loop.
    uvloop.run(server.serve())
    if not server.started:
        # uvicorn logs the bind error itself and returns without serving.
        print(f"tips gateway: cannot start: could not listen on {address}", file=sys.stderr)
        raise SystemExit(1)
    log.info("stopped")


def _host_port(text: str, flag: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SystemExit(f"tips gateway: {flag} wants HOST:PORT, got {text!r}")
    return host, int(port)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m gateway",
        description="REST/JSON to gRPC gateway for any descriptor set with google.api.http rules "
        "(no flags: the Tips product and the mesh's settings)",
    )
    parser.add_argument(
        "--descriptor-set", type=Path, help="FileDescriptorSet (buf build / protoc)"
    )
    parser.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="FULL.SERVICE.NAME=HOST:PORT",
        help="where a gRPC service is served (repeatable)",
    )
    parser.add_argument("--default-upstream", metavar="HOST:PORT", help="for unlisted services")
    parser.add_argument("--listen", metavar="HOST:PORT", help="HTTP address (default: settings)")
    parser.add_argument("--no-auth", action="store_true", help="check no tokens")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m gateway [flags]``."""
    args = parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"tips gateway: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    host, port = _host_port(args.listen, "--listen") if args.listen else (None, None)
    if args.descriptor_set is None:
        if args.upstream or args.default_upstream:
            raise SystemExit("tips gateway: --upstream needs --descriptor-set")
        upstreams = Upstreams.from_settings(settings)
        if args.no_auth:
            app = create_app(settings, upstreams, auth=None)
        else:
            app = product_app(settings, upstreams)
        run(settings, app, host=host, port=port)
        return
    services: dict[str, str] = {}
    for item in args.upstream:
        name, sep, address = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"tips gateway: --upstream wants NAME=HOST:PORT, got {item!r}")
        _host_port(address, "--upstream")
        services[name] = address
    if args.default_upstream:
        _host_port(args.default_upstream, "--default-upstream")
    try:
        image = load_image(args.descriptor_set)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"tips gateway: cannot read {args.descriptor_set}: {exc}") from None
    upstreams = Upstreams(services, services=services, default=args.default_upstream)
    auth = None if args.no_auth else edge_auth(settings, upstreams)
    try:
        app = create_app(settings, upstreams, image=image, auth=auth)
    except (ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"tips gateway: bad descriptor set: {exc}") from None
    run(settings, app, host=host, port=port)

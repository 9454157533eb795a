"""The edge's ASGI app: explicit routes, middleware and lifespan.

Later transcoding adds routes built from descriptors to ``routes`` and
keeps the rest: every error leaves as google.rpc.Status JSON.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.errors import error_info, status_response
from gateway.upstreams import Upstreams, not_serving
from kernel.settings import Settings

# Readiness must answer fast even when an upstream hangs.
READY_CHECK_TIMEOUT = 1.0


async def healthz(request: Request) -> Response:
    """Liveness: the process is up and answering."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Readiness: every upstream reports SERVING on gRPC health."""
    upstreams: Upstreams = request.app.state.upstreams
    statuses = await upstreams.health(READY_CHECK_TIMEOUT)
    bad = not_serving(statuses)
    if not bad:
        return JSONResponse({"status": "ready", "services": statuses})
    listing = ", ".join(f"{name} is {status}" for name, status in sorted(bad.items()))
    return status_response(
        grpc.StatusCode.UNAVAILABLE,
        f"not ready: {listing}",
        [error_info("UPSTREAM_NOT_SERVING", bad)],
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return status_response(
            grpc.StatusCode.NOT_FOUND, f"no route for {request.method} {request.url.path}"
        )
    if exc.status_code == 405:
        return status_response(
            grpc.StatusCode.UNIMPLEMENTED,
            f"method {request.method} not allowed on {request.url.path}",
        )
    return status_response(grpc.StatusCode.UNKNOWN, str(exc.detail))


async def _internal_error(request: Request, exc: Exception) -> Response:
    # Never leak the exception text to clients; it is in the server log.
    return status_response(grpc.StatusCode.INTERNAL, "internal error")


def create_app(settings: Settings, upstreams: Upstreams | None = None) -> Starlette:
    """The edge app; ``upstreams`` defaults to the addresses in ``settings``."""
    ups = upstreams if upstreams is not None else Upstreams.from_settings(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.upstreams = ups
        try:
            yield
        finally:
            await ups.close()

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
    middleware = [Middleware(GZipMiddleware, minimum_size=1024)]
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        lifespan=lifespan,
    )

"""The edge's ASGI app: explicit routes, middleware and lifespan.

Transcoded routes (built from the descriptor set at start-up) are served by
``EdgeApp`` before Starlette's stack: its routing and error middleware
would cost more per request than the transcoding itself.
What no route matches reaches the router (``/healthz``, ``/readyz``, ...),
and its 404 tells "no route" from "wrong method" with the route table.
Every error leaves as google.rpc.Status JSON.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from http import HTTPStatus

import grpc
from google.protobuf import descriptor_pb2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.descriptors import build_pool, load_image
from gateway.docs_page import docs_html_from_spec
from gateway.errors import error_info, status_response
from gateway.openapi import build_openapi
from gateway.proxy import (
    EdgeAuth,
    LocalHandler,
    Transcoder,
    form_fallback,
    raw_path,
    serve_guarded,
)
from gateway.render import Renderer
from gateway.revocations import RevocationFeed
from gateway.routing import build_routes
from gateway.screens import product_screens
from gateway.transcode import Codec
from gateway.upstreams import Upstreams, not_serving
from gateway.webapp import web_app_routes
from kernel.settings import Settings

# Readiness must answer fast even when an upstream hangs.
READY_CHECK_TIMEOUT = 1.0


async def healthz(request: Request) -> Response:
    """Liveness: the process is up and answering."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Readiness: every upstream reports SERVING on gRPC health, and the revocation
    feed (when there is one) has read the recent revocations once."""
    upstreams: Upstreams = request.app.state.upstreams
    statuses = await upstreams.health(READY_CHECK_TIMEOUT)
    bad = not_serving(statuses)
    feed: RevocationFeed | None = getattr(request.app.state, "revocations", None)
    if feed is not None and not feed.ready:
        # Until then a token revoked before this process started would pass.
        bad["revocations"] = feed.state
    if not bad:
        body: dict[str, object] = {"status": "ready", "services": statuses}
        if feed is not None:
            body["revocations"] = feed.state
        return JSONResponse(body)
    listing = ", ".join(f"{name} is {status}" for name, status in sorted(bad.items()))
    return status_response(
        grpc.StatusCode.UNAVAILABLE,
        f"not ready: {listing}",
        [error_info("UPSTREAM_NOT_SERVING", bad)],
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    """404 and 405 as grpc-gateway's DefaultRoutingErrorHandler words them (runtime/errors.go):
    NOT_FOUND / UNIMPLEMENTED, the message the HTTP status text."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        transcoder: Transcoder | None = getattr(request.app.state, "transcoder", None)
        raw: bytes = request.scope.get("raw_path") or request.url.path.encode()
        allowed = transcoder.allowed(raw.decode("latin-1")) if transcoder else []
        if not allowed:
            return status_response(grpc.StatusCode.NOT_FOUND, HTTPStatus.NOT_FOUND.phrase)
        return _not_allowed(", ".join(allowed))
    if exc.status_code == 405:
        # One of the app's own routes (/healthz, ...): Starlette names its methods (a set).
        methods = (exc.headers or {}).get("Allow", "").split(",")
        return _not_allowed(", ".join(sorted(m.strip() for m in methods if m.strip())))
    return status_response(grpc.StatusCode.UNKNOWN, str(exc.detail))


def _not_allowed(allow: str) -> Response:
    # grpc-gateway answers HTTP 501 here (UNIMPLEMENTED's status); 405 with Allow is
    # what HTTP asks for a method the path does not serve (docs/gateway.md).
    response = status_response(grpc.StatusCode.UNIMPLEMENTED, HTTPStatus.METHOD_NOT_ALLOWED.phrase)
    response.status_code = HTTPStatus.METHOD_NOT_ALLOWED
    if allow:
        response.headers["allow"] = allow
    return response


async def _internal_error(request: Request, exc: Exception) -> Response:
    # Never leak the exception text to clients; it is in the server log.
    return status_response(grpc.StatusCode.INTERNAL, "internal error")


class EdgeApp(Starlette):
    """Starlette, with the transcoded routes matched and served first."""

    transcoder: Transcoder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            found = self.transcoder.table.match(scope["method"], raw_path(scope))
            if found is None:
                found = form_fallback(self.transcoder.table, scope)
            if found is not None:
                await serve_guarded(self.transcoder, scope, receive, send, *found)
                return
        await super().__call__(scope, receive, send)


def build_transcoder(
    image: descriptor_pb2.FileDescriptorSet,
    upstreams: Upstreams,
    *,
    auth: EdgeAuth | None,
    default_deadline_s: float,
    local: dict[str, LocalHandler] | None = None,
) -> Transcoder:
    """Everything derived from the descriptor set, once: routes, codecs, renderers."""
    pool = build_pool(image)
    codec = Codec(pool)
    table = build_routes(pool, image, codec, Renderer(pool))
    return Transcoder(
        table, codec, upstreams, auth=auth, default_deadline_s=default_deadline_s, local=local
    )


def create_app(
    settings: Settings,
    upstreams: Upstreams | None = None,
    *,
    image: descriptor_pb2.FileDescriptorSet | None = None,
    auth: EdgeAuth | None = None,
    local: dict[str, LocalHandler] | None = None,
    revocations: RevocationFeed | None = None,
) -> Starlette:
    """The edge app.

    ``upstreams`` defaults to the mesh's addresses in ``settings``, ``image``
    to the product's descriptor set. ``auth=None`` checks no token and sends
    no identity upstream (``--no-auth``, tests); the server passes EdgeAuth.
    ``revocations`` (the feed of the set ``auth`` refuses) is started and
    stopped with the app, and shown by ``/readyz``.
    """
    ups = upstreams if upstreams is not None else Upstreams.from_settings(settings)
    if image is None:
        # The product: its descriptor set, and the screens the edge composes itself.
        image = load_image()
        local = {**product_screens(ups.channel), **(local or {})}
    spec = build_openapi(image, build_pool(image), title="Tips mesh API", version="v1")
    spec_json = json.dumps(spec, separators=(",", ":")).encode()
    docs_page = docs_html_from_spec(spec)

    async def openapi(request: Request) -> Response:
        return Response(spec_json, media_type="application/json")

    async def docs(request: Request) -> Response:
        return HTMLResponse(docs_page)

    transcoder = build_transcoder(
        image,
        ups,
        auth=auth,
        default_deadline_s=settings.default_deadline_seconds,
        local=local,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.upstreams = ups
        app.state.revocations = revocations
        if revocations is not None:
            revocations.start()  # in the background: a down bus does not stop the edge
        try:
            yield
        finally:
            if revocations is not None:
                await revocations.close()
            if auth is not None:
                await auth.close()
            await ups.close()

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        # The web app at /app/ when settings name its build (gateway_web_dir).
        *web_app_routes(settings.gateway_web_dir),
    ]
    # Transcoded routes gzip large bodies themselves; this serves /openapi.json and /docs.
    middleware = [Middleware(GZipMiddleware, minimum_size=1024)]
    app = EdgeApp(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
        lifespan=lifespan,
    )
    app.transcoder = transcoder
    app.state.transcoder = transcoder
    return app

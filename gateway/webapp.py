"""The web app (web/, built into web/dist) served by the edge at ``/app/``.

Same origin as the REST API, so the app needs no CORS and its token never
crosses origins. Every answer carries a strict Content-Security-Policy (the
app's own scripts and styles only, and it calls only this origin) and
``Referrer-Policy: no-referrer``: the sign-in callback lands on
``/app/?code=...&state=...`` and the code must not leak to another site.
``index.html`` is revalidated on every load; ``assets/`` have content-hashed
names and are cached for good. Unknown paths under ``/app/`` are 404s with a
google.rpc.Status body, like every other miss at the edge.

Apple answers a web sign-in with a form post to the redirect URI
(``response_mode=form_post``); ``POST /app/`` turns it into the same
``/app/?code=...&state=...`` landing a Google redirect gives, so the app has
one callback.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlencode

import grpc
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from gateway.errors import status_response

PREFIX = "/app"
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
IMMUTABLE = "public, max-age=31536000, immutable"
# What a provider's form post may carry to the app (OpenID Connect callback).
CALLBACK_FIELDS = ("code", "state", "error", "error_description")
MAX_CALLBACK_BYTES = 16 * 1024


class _WebAppFiles(StaticFiles):
    """StaticFiles with the app's headers, and the edge's 404 body."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        cache = IMMUTABLE if "/assets/" in path else "no-cache"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                headers.append((b"cache-control", cache.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await super().__call__(scope, receive, send_with_headers)
        except HTTPException as exc:
            message = "not found" if exc.status_code == 404 else str(exc.detail)
            code = grpc.StatusCode.NOT_FOUND if exc.status_code == 404 else grpc.StatusCode.UNKNOWN
            response = status_response(code, f"web app: {message}: {path}")
            response.status_code = exc.status_code
            await response(scope, receive, send)


async def form_post_callback(request: Request) -> Response:
    """A provider's form-posted sign-in answer, as the app's query-string callback."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_CALLBACK_BYTES:
            return status_response(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"sign-in callback: body over {MAX_CALLBACK_BYTES} bytes",
            )
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return status_response(
            grpc.StatusCode.INVALID_ARGUMENT,
            "sign-in callback: content-type must be application/x-www-form-urlencoded",
        )
    form = parse_qs(body.decode("utf-8", errors="replace"))
    answer = {k: form[k][0] for k in CALLBACK_FIELDS if form.get(k)}
    if "state" not in answer:
        return status_response(
            grpc.StatusCode.INVALID_ARGUMENT, "sign-in callback: field `state` is required"
        )
    return RedirectResponse(f"{PREFIX}/?{urlencode(answer)}", status_code=303)


def web_app_routes(web_dir: str) -> list[BaseRoute]:
    """``/app/`` from ``web_dir`` (the built app), ``/`` and ``/app`` redirecting to it.

    An empty ``web_dir`` serves no app. A ``web_dir`` without ``index.html``
    (not built yet) answers 404 saying how to build it.
    """
    if not web_dir:
        return []

    async def to_app(request: Request) -> Response:
        return RedirectResponse(f"{PREFIX}/", status_code=302)

    routes: list[BaseRoute] = [
        Route("/", to_app, methods=["GET", "HEAD"]),
        Route(PREFIX, to_app, methods=["GET", "HEAD"]),
        Route(PREFIX + "/", form_post_callback, methods=["POST"]),
    ]
    directory = Path(web_dir)
    if (directory / "index.html").is_file():
        routes.append(Mount(PREFIX, app=_WebAppFiles(directory=directory, html=True)))
        return routes

    async def not_built(request: Request) -> Response:
        return status_response(
            grpc.StatusCode.NOT_FOUND,
            f"the web app is not built ({directory}/index.html is missing): run `make web`",
        )

    routes.append(Route(PREFIX + "/{path:path}", not_built, methods=["GET", "HEAD"]))
    return routes

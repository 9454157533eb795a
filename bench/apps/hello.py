"""The smallest ASGI apps: the same JSON answer bare and through Starlette."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

BODY = b'{"name":"users/u1/tips/t1","title":"Take a 10-minute walk"}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def raw(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Bare ASGI: the floor of any ASGI server."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


async def _tip(request: Request) -> Response:
    return Response(BODY, media_type="application/json")


starlette = Starlette(routes=[Route("/v1/users/{user}/tips/{tip}", _tip)])

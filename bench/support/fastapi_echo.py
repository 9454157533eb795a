"""GetEcho as a hand-written FastAPI endpoint: what a team writes instead of a gateway.

    python bench/support/fastapi_echo.py PB_DIR UPSTREAM PORT

GET /v1/users/{user}/echoes/{echo}?pageSize=N calls EchoService.GetEcho on
UPSTREAM over one grpc.aio channel (opened in the lifespan) and returns the
answer as a dict, the way such services usually do (no protobuf json_format).
Served by uvicorn with the gateway's stack (uvloop, httptools, one worker, no
access log).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import grpc
import uvicorn
from fastapi import FastAPI, Query, Request


def make_app(upstream: str) -> FastAPI:
    from benchecho.v1 import echo_pb2, echo_pb2_grpc

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with grpc.aio.insecure_channel(upstream) as channel:
            app.state.echo = echo_pb2_grpc.EchoServiceStub(channel)
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/v1/users/{user}/echoes/{echo}")
    async def get_echo(
        user: str,
        echo: str,
        request: Request,
        page_size: Annotated[int, Query(alias="pageSize")] = 0,
    ) -> dict[str, Any]:
        answer = await request.app.state.echo.GetEcho(
            echo_pb2.GetEchoRequest(name=f"users/{user}/echoes/{echo}", page_size=page_size)
        )
        return {"name": answer.name, "title": answer.title, "pageSize": answer.page_size}

    return app


if __name__ == "__main__":
    sys.path.insert(0, sys.argv[1])
    uvicorn.run(
        make_app(sys.argv[2]),
        host="127.0.0.1",
        port=int(sys.argv[3]),
        loop="uvloop",
        http="httptools",
        workers=1,
        access_log=False,
        log_level="warning",
    )

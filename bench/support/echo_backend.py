"""The benchmark's gRPC backend: EchoService from bench/protos, on a given port.

python bench/support/echo_backend.py PB_DIR PORT
"""

from __future__ import annotations

import sys
from typing import Any

import grpc
import uvloop


async def serve(port: int) -> None:
    from benchecho.v1 import echo_pb2, echo_pb2_grpc

    class Echo(echo_pb2_grpc.EchoServiceServicer):
        async def GetEcho(self, request: Any, context: Any) -> Any:
            return echo_pb2.GetEchoResponse(
                name=request.name, title="Take a 10-minute walk", page_size=request.page_size
            )

    server = grpc.aio.server()
    echo_pb2_grpc.add_EchoServiceServicer_to_server(Echo(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    sys.path.insert(0, sys.argv[1])
    uvloop.run(serve(int(sys.argv[2])))

"""A gRPC load generator: one grpc.aio channel, N concurrent callers, T seconds.

    python bench/support/grpc_load.py PB_DIR ADDRESS CONCURRENCY SECONDS OUT_JSON
Writes JSON: {"count": n, "seconds": s, "latencies_ms": [...]}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import grpc
import uvloop


async def run(address: str, concurrency: int, seconds: float) -> dict[str, object]:
    from benchecho.v1 import echo_pb2, echo_pb2_grpc

    latencies: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = echo_pb2_grpc.EchoServiceStub(channel)
        request = echo_pb2.GetEchoRequest(name="users/u1/echoes/e1", page_size=10)
        for _ in range(200):  # warm-up
            await stub.GetEcho(request)
        stop = time.perf_counter() + seconds

        async def caller() -> None:
            while (started := time.perf_counter()) < stop:
                await stub.GetEcho(request)
                latencies.append((time.perf_counter() - started) * 1000)

        began = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return {"count": len(latencies), "seconds": elapsed, "latencies_ms": latencies}


if __name__ == "__main__":
    sys.path.insert(0, sys.argv[1])
    result = uvloop.run(run(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
    Path(sys.argv[5]).write_text(json.dumps(result))

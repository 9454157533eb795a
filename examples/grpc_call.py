"""Call the running mesh over gRPC directly, as a mesh process does.

    .venv/bin/python examples/grpc_call.py

Reads the run dir of `tips up` (``TIPS_RUN_DIR``, else ``.run/``): where each
service listens (``mesh.json``) and the development certificates
(``tls/``). It presents the ``operator`` certificate, the identity of the
`tips` tools: mutual TLS, and the server checks the proto lists ``operator``
among the RPC's callers (docs/security.md). Prints every service's health,
then the recommender's policy status (an internal RPC open to operators).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc

from kernel.settings import SERVICE_NAMES
from kernel.tls import secure_channel
from tips.recommender.v1 import recommender_service_pb2 as rec
from tips.recommender.v1 import recommender_service_pb2_grpc as rec_grpc
from tipsmesh.devcerts import identity

ROOT = Path(__file__).resolve().parents[1]


async def main() -> None:
    run_dir = Path(os.environ.get("TIPS_RUN_DIR") or ROOT / ".run")
    try:
        ports = json.loads((run_dir / "mesh.json").read_text())["ports"]
    except FileNotFoundError:
        raise SystemExit(f"no running mesh in {run_dir}: run `make up` first") from None
    operator = identity(run_dir / "tls", "operator").settings()
    for name in SERVICE_NAMES:
        # The server must prove it is `name`; this process proves it is the operator.
        async with secure_channel(f"127.0.0.1:{ports[name]}", operator, server_name=name) as ch:
            reply = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        print(f"{name:13} {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
    address = f"127.0.0.1:{ports['recommender']}"
    async with secure_channel(address, operator, server_name="recommender") as ch:
        status = await rec_grpc.RecommenderInternalServiceStub(ch).GetPolicyStatus(
            rec.GetPolicyStatusRequest(), timeout=5
        )
    print(f"policy {status.policy_name}, model {status.model_version or '(none)'}")


if __name__ == "__main__":
    asyncio.run(main())

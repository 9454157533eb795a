"""Call the running mesh over gRPC directly, as an operator's tool does.

    .venv/bin/python examples/grpc_call.py

``tipsclient.connect(name)`` (clients/python, docs/python-client.md) finds
the run dir of `tips up` (``TIPS_RUN_DIR``, else ``.run/`` here or in a
parent): where each service listens (``mesh.json``) and the development
certificates (``tls/``). It presents the ``operator`` certificate, the
identity of the `tips` tools, and checks each server's certificate names the
service asked for; the server checks the proto lists ``operator`` among the
RPC's callers (docs/security.md). Prints every service's health, then the
recommender's policy status (an internal RPC open to operators).

Needs only the client package: ``pip install './clients/python[health]'``.
"""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health_pb2, health_pb2_grpc

import tipsclient
from tips.recommender.v1 import recommender_service_pb2 as rec
from tips.recommender.v1 import recommender_service_pb2_grpc as rec_grpc
from tipsclient import rundir


async def main() -> None:
    try:
        mesh = rundir.find()
    except tipsclient.ClientConfigError as exc:
        raise SystemExit(f"grpc_call: {exc}") from None
    for name in mesh.services:
        async with tipsclient.connect(name, run_dir=mesh.path) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        print(f"{name:13} {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
    async with tipsclient.connect("recommender", run_dir=mesh.path) as channel:
        status = await rec_grpc.RecommenderInternalServiceStub(channel).GetPolicyStatus(
            rec.GetPolicyStatusRequest(), timeout=5
        )
    print(f"policy {status.policy_name}, model {status.model_version or '(none)'}")


if __name__ == "__main__":
    asyncio.run(main())

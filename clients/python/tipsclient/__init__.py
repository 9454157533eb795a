"""A typed client for the Tips mesh: ``connect(service)`` and the generated ``tips`` stubs.

    import tipsclient
    from tips.recommender.v1 import recommender_service_pb2 as rec
    from tips.recommender.v1 import recommender_service_pb2_grpc as rec_grpc

    async with tipsclient.connect("recommender") as channel:  # the operator certificate
        status = await rec_grpc.RecommenderInternalServiceStub(channel).GetPolicyStatus(
            rec.GetPolicyStatusRequest(), timeout=5
        )

docs/python-client.md in the mesh's repository says more.
"""

from __future__ import annotations

from tipsclient.connect import DEFAULT_IDENTITY, Connection, bearer, connect
from tipsclient.errors import (
    CertificateFileError,
    ClientConfigError,
    ConnectError,
    TipsClientError,
)
from tipsclient.rundir import RunDir

__all__ = [
    "DEFAULT_IDENTITY",
    "CertificateFileError",
    "ClientConfigError",
    "ConnectError",
    "Connection",
    "RunDir",
    "TipsClientError",
    "bearer",
    "connect",
]

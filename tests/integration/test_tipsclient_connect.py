"""``tipsclient.connect`` against a real mesh server with mutual TLS.

The server is the kernel's (``kernel.server.ServiceServer``: its TLS, caller
policy and token verification, as every service runs), serving stand-ins of
the recommender's two services with development certificates from
``tipsmesh.devcerts``, as `tips up` issues them. The client finds the
address and its certificate in a run dir laid out as `tips up` leaves it, or
takes them explicitly; it must refuse a server whose certificate names
another service, or that a CA it does not trust signed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import tipsclient
from kernel.identity import require_caller
from kernel.server import ServiceServer
from kernel.service import Binding, Runtime, ServiceDefinition, bind
from kernel.settings import Settings
from kernel.tls import peer_name
from tests.support.tokens import issuer
from tips.recommender.v1 import recommender_service_pb2 as rec
from tips.recommender.v1 import recommender_service_pb2_grpc as rec_grpc
from tips.recommender.v1 import tip_pb2
from tipsmesh.devcerts import MeshIdentity, ensure_mesh_certs

pytestmark = pytest.mark.integration

NAMES = ("recommender", "operator", "gateway")


class _Calls:
    """What reached a handler: (method, calling process)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []


class _Recommender(rec_grpc.RecommenderServiceServicer):  # type: ignore[misc]
    def __init__(self, calls: _Calls) -> None:
        self.calls = calls

    async def ListTips(self, request: rec.ListTipsRequest, context: Any) -> rec.ListTipsResponse:
        self.calls.seen.append(("ListTips", peer_name(context)))
        user = require_caller().user  # from the token the server verified itself
        tip = tip_pb2.Tip(name=f"users/{user}/tips/t1", title="Take a 10-minute walk")
        return rec.ListTipsResponse(tips=[tip])


class _Internal(rec_grpc.RecommenderInternalServiceServicer):  # type: ignore[misc]
    def __init__(self, calls: _Calls) -> None:
        self.calls = calls

    async def GetPolicyStatus(
        self, request: rec.GetPolicyStatusRequest, context: Any
    ) -> rec.GetPolicyStatusResponse:
        self.calls.seen.append(("GetPolicyStatus", peer_name(context)))
        return rec.GetPolicyStatusResponse(policy_name="linucb")


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls")
    ensure_mesh_certs(directory, NAMES)
    return directory


@pytest.fixture(scope="module")
def calls() -> _Calls:
    return _Calls()


@pytest.fixture(scope="module")
async def address(tls_dir: Path, calls: _Calls) -> AsyncIterator[str]:
    async def build(runtime: Runtime) -> Sequence[Binding]:
        return [
            bind(_Recommender(calls), rec_grpc, rec, "RecommenderService"),
            bind(_Internal(calls), rec_grpc, rec, "RecommenderInternalService"),
        ]

    definition = ServiceDefinition(name="recommender", build=build, uses_db=False, uses_bus=False)
    settings = Settings(
        insecure=False,
        tls_ca_file=str(tls_dir / "ca.pem"),
        tls_cert_file=str(tls_dir / "recommender.pem"),
        tls_key_file=str(tls_dir / "recommender.key"),
        jwks_url=issuer().jwks_url,
        log_format="text",
        log_level="WARNING",
    )
    server = ServiceServer(definition, settings, port=0)
    try:
        await server.start()
        yield server.address
    finally:
        await server.stop(grace=0)


@pytest.fixture
def run_dir(tmp_path: Path, address: str, tls_dir: Path) -> Path:
    """A run dir as `tips up` leaves it: mesh.json with the ports, the certificates."""
    run = tmp_path / ".run"
    run.mkdir()
    port = int(address.rsplit(":", 1)[1])
    state = {"ports": {"recommender": port, "gateway": 8080}, "tls_dir": str(tls_dir)}
    (run / "mesh.json").write_text(json.dumps(state))
    return run


async def test_from_a_run_dir_it_presents_the_operator_and_reaches_the_service(
    run_dir: Path, calls: _Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TIPS_RUN_DIR", raising=False)
    monkeypatch.chdir(run_dir.parent)  # found as ./.run, as in a checkout
    async with tipsclient.connect("recommender") as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        status = await rec_grpc.RecommenderInternalServiceStub(channel).GetPolicyStatus(
            rec.GetPolicyStatusRequest(), timeout=5
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert status.policy_name == "linucb"
    assert calls.seen[-1] == ("GetPolicyStatus", "operator")


async def test_a_token_names_the_user_on_every_call(run_dir: Path, calls: _Calls) -> None:
    token = issuer().mint("u_client", ttl_s=600)
    request = rec.ListTipsRequest(parent="users/u_client", page_size=1)
    async with tipsclient.connect(
        "recommender", run_dir=run_dir, identity="gateway", token=f"Bearer {token}\n"
    ) as channel:
        stub = rec_grpc.RecommenderServiceStub(channel)
        for _ in range(2):
            reply = await stub.ListTips(request, timeout=5)
            assert [t.name for t in reply.tips] == ["users/u_client/tips/t1"]
    assert calls.seen[-1] == ("ListTips", "gateway")
    # One user per call instead of per channel: bearer() is the metadata.
    async with tipsclient.connect("recommender", run_dir=run_dir, identity="gateway") as channel:
        stub = rec_grpc.RecommenderServiceStub(channel)
        reply = await stub.ListTips(request, metadata=tipsclient.bearer(token), timeout=5)
        assert reply.tips[0].name.startswith("users/u_client/")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListTips(request, timeout=5)  # no token: no user
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_the_server_checks_which_certificate_the_client_presented(run_dir: Path) -> None:
    token = issuer().mint("u_client", ttl_s=600)
    # Public RPCs take the gateway's certificate, not the operator's (the protos' callers).
    async with tipsclient.connect("recommender", run_dir=run_dir, token=token) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await rec_grpc.RecommenderServiceStub(channel).ListTips(
                rec.ListTipsRequest(parent="users/u_client"), timeout=5
            )
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "'operator' may not call" in (err.value.details() or "")


async def test_explicit_address_and_files_need_no_run_dir(
    address: str, tls_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TIPS_RUN_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # no .run here or above
    channel = await tipsclient.connect(
        "recommender",
        address=address,
        ca=tls_dir / "ca.pem",
        cert=tls_dir / "operator.pem",
        key=str(tls_dir / "operator.key"),
    )
    try:
        status = await rec_grpc.RecommenderInternalServiceStub(channel).GetPolicyStatus(
            rec.GetPolicyStatusRequest(), timeout=5
        )
    finally:
        await channel.close()
    assert status.policy_name == "linucb"


async def test_it_refuses_a_server_whose_certificate_names_another_service(
    address: str, tls_dir: Path, calls: _Calls
) -> None:
    before = len(calls.seen)
    files = {"ca": tls_dir / "ca.pem", "cert": tls_dir / "operator.pem"}
    with pytest.raises(tipsclient.ConnectError) as err:
        # The recommender listens there: its certificate does not say "auth".
        await tipsclient.connect("auth", address=address, key=tls_dir / "operator.key", **files)
    message = str(err.value)
    assert f"cannot connect to auth at {address}" in message
    assert "did not prove it is 'auth'" in message
    # A lazy channel (wait=None) fails its calls instead, and no handler runs either.
    async with tipsclient.connect(
        "auth", address=address, key=tls_dir / "operator.key", wait=None, **files
    ) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as rpc:
            await rec_grpc.RecommenderInternalServiceStub(channel).GetPolicyStatus(
                rec.GetPolicyStatusRequest(), timeout=5
            )
    assert rpc.value.code() is grpc.StatusCode.UNAVAILABLE
    assert len(calls.seen) == before


async def test_it_refuses_a_server_signed_by_another_ca_and_is_refused_with_one(
    address: str, tls_dir: Path, tmp_path: Path, calls: _Calls
) -> None:
    before = len(calls.seen)
    other: MeshIdentity = ensure_mesh_certs(tmp_path / "other", ["operator"])["operator"]
    with pytest.raises(tipsclient.ConnectError, match="did not prove it is 'recommender'"):
        await tipsclient.connect(
            "recommender",
            address=address,
            ca=other.ca_file,
            cert=other.cert_file,
            key=other.key_file,
        )
    # The server's CA, this client's certificate from another: the server refuses it.
    with pytest.raises(tipsclient.ConnectError, match="refused this client's certificate"):
        await tipsclient.connect(
            "recommender",
            address=address,
            ca=tls_dir / "ca.pem",
            cert=other.cert_file,
            key=other.key_file,
        )
    assert len(calls.seen) == before


async def test_nothing_listening_says_so(tls_dir: Path) -> None:
    files = {"ca": tls_dir / "ca.pem", "cert": tls_dir / "operator.pem"}
    with pytest.raises(tipsclient.ConnectError, match="nothing listens there"):
        await tipsclient.connect(
            "recommender", address="127.0.0.1:1", key=tls_dir / "operator.key", **files
        )

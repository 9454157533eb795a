"""Upstream errors at the edge: our services' Status passes, transport text does not."""

from __future__ import annotations

import grpc
import pytest
from grpc.aio import AioRpcError, Metadata

from gateway.errors import UPSTREAM_UNAVAILABLE, status_of_rpc_error

pytestmark = pytest.mark.unit


def test_a_transport_failure_does_not_leak_internal_addresses() -> None:
    error = AioRpcError(
        grpc.StatusCode.UNAVAILABLE, Metadata(), Metadata(),
        details="failed to connect to all addresses; last error: 10.0.3.7:50051",
    )  # fmt: skip
    status = status_of_rpc_error(error)
    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert status.message == UPSTREAM_UNAVAILABLE
    assert "10.0.3.7" not in status.message


def test_a_service_error_passes_unchanged() -> None:
    error = AioRpcError(grpc.StatusCode.NOT_FOUND, Metadata(), Metadata(), details="users/u/tips/t")
    status = status_of_rpc_error(error)
    assert status.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert status.message == "users/u/tips/t"

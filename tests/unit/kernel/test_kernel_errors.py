"""Domain errors map to the right gRPC code and google.rpc.Status details."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from kernel.errors import (
    DETAILS_KEY,
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
    unpack_details,
)

pytestmark = pytest.mark.unit


def _details(status: status_pb2.Status) -> dict[type, object]:
    return {type(d): d for d in unpack_details(status)}


def test_invalid_argument_has_bad_request_and_error_info() -> None:
    err = InvalidArgument([("tip.name", "required"), ("page_size", "must be positive")])
    status = err.to_status()
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status.message == "invalid argument: tip.name: required; page_size: must be positive"
    details = _details(status)
    bad = details[error_details_pb2.BadRequest]
    assert isinstance(bad, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("tip.name", "required"),
        ("page_size", "must be positive"),
    ]
    info = details[error_details_pb2.ErrorInfo]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == ("INVALID_ARGUMENT", "tips.app")


def test_not_found_has_resource_info() -> None:
    status = NotFound("users/u_1/tips/t_1", resource_type="tips.app/Tip").to_status()
    assert status.code == grpc.StatusCode.NOT_FOUND.value[0]
    info = _details(status)[error_details_pb2.ResourceInfo]
    assert isinstance(info, error_details_pb2.ResourceInfo)
    assert info.resource_name == "users/u_1/tips/t_1"
    assert info.resource_type == "tips.app/Tip"


@pytest.mark.parametrize("cls", [ResourceExhausted, Unavailable])
def test_retry_info_when_retry_after(cls: type[ResourceExhausted]) -> None:
    status = cls("slow down", retry_after=timedelta(seconds=3)).to_status()
    retry = _details(status)[error_details_pb2.RetryInfo]
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert retry.retry_delay.seconds == 3
    assert error_details_pb2.RetryInfo not in _details(cls("no hint").to_status())


def test_reason_and_metadata_travel_and_reason_is_checked() -> None:
    err = AlreadyExists("already connected", reason="ACCOUNT_LINKED", metadata={"provider": "x"})
    info = _details(err.to_status())[error_details_pb2.ErrorInfo]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.reason == "ACCOUNT_LINKED" and dict(info.metadata) == {"provider": "x"}
    with pytest.raises(ValueError, match="UPPER_SNAKE"):
        PermissionDenied("no", reason="not-snake")


def test_grpc_status_carries_details_trailer() -> None:
    err = InvalidArgument([("name", "bad")])
    status = err.to_grpc_status()
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    assert status.details == err.message
    trailers = dict(status.trailing_metadata)
    assert status_pb2.Status.FromString(trailers[DETAILS_KEY]) == err.to_status()

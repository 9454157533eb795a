"""Errors at the edge as google.rpc.Status JSON (``{"code", "message", "details"}``)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from starlette.responses import JSONResponse

from kernel.errors import ERROR_DOMAIN, status_details

# google.rpc.Code -> HTTP status, as in google/rpc/code.proto.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


def error_info(reason: str, metadata: Mapping[str, str]) -> dict[str, Any]:
    """A google.rpc.ErrorInfo detail in its JSON (Any) form."""
    return {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "domain": ERROR_DOMAIN,
        "metadata": dict(metadata),
    }


def status_response(
    code: grpc.StatusCode, message: str, details: Sequence[Mapping[str, Any]] = ()
) -> JSONResponse:
    """A google.rpc.Status body with the HTTP status its code maps to."""
    number: int = code.value[0]
    body = {"code": number, "message": message, "details": [dict(d) for d in details]}
    return JSONResponse(body, status_code=HTTP_STATUS[code])


# --- google.rpc.Status as the transcoding path sends it ----------------------

_CODES = {code.value[0]: code for code in grpc.StatusCode}
# The challenge a 401 carries (RFC 6750); the reason says why, never the token.
_BEARER = 'Bearer realm="tips"'


def status_dict(status: status_pb2.Status) -> dict[str, Any]:
    """A Status as JSON, each detail as ``{"@type": ..., ...}``."""
    details: list[dict[str, Any]] = []
    for packed in status.details:
        try:
            details.append(
                json_format.MessageToDict(packed, always_print_fields_with_no_presence=True)
            )
        except (TypeError, KeyError, json_format.Error):
            # A detail type this process does not know: keep it opaque.
            value = base64.b64encode(packed.value).decode("ascii")
            details.append({"@type": packed.type_url, "value": value})
    return {"code": status.code, "message": status.message, "details": details}


def http_status_of(code: int) -> int:
    """The HTTP status of a google.rpc.Code number (unknown codes are 500)."""
    found = _CODES.get(code)
    return HTTP_STATUS[found] if found is not None else 500


# What a client sees when the gRPC library itself failed to reach a service:
# its own message names internal addresses ("failed to connect to 10.0.3.7:50051").
UPSTREAM_UNAVAILABLE = "the service is unavailable right now; retry later"


def status_of_rpc_error(error: grpc.RpcError) -> status_pb2.Status:
    """The Status an upstream call failed with, details included.

    Our services always attach details (ErrorInfo at least); a detail-less
    UNAVAILABLE comes from the transport, so its text is replaced.
    """
    status = status_details(error)
    if status.code == grpc.StatusCode.UNAVAILABLE.value[0] and not status.details:
        return status_pb2.Status(code=status.code, message=UPSTREAM_UNAVAILABLE)
    return status


def error_parts(
    status: status_pb2.Status, *, http_status: int | None = None
) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """(HTTP status, body, headers) for a Status; 401 carries ``WWW-Authenticate``."""
    body = json.dumps(status_dict(status), separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json")]
    if status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]:
        challenge = _BEARER
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                challenge += f', error="invalid_token", error_description="{info.reason}"'
                break
        headers.append((b"www-authenticate", challenge.encode()))
    return http_status or http_status_of(status.code), body, headers


def routing_status(code: grpc.StatusCode, message: str) -> status_pb2.Status:
    """The Status of a 404 / 405 (grpc-gateway: NOT_FOUND / UNIMPLEMENTED)."""
    return status_pb2.Status(code=code.value[0], message=message)

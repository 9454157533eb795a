"""Errors at the edge as google.rpc.Status JSON (``{"code", "message", "details"}``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from starlette.responses import JSONResponse

from kernel.errors import ERROR_DOMAIN

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

"""Domain errors services raise, and their mapping to ``google.rpc.Status``.

A servicer raises e.g. ``InvalidArgument([("page_size", "must be positive")])``;
the server interceptor turns it into the gRPC status code plus rich details
(AIP-193): ``ErrorInfo`` always, ``BadRequest`` for field violations,
``ResourceInfo`` for NotFound, ``RetryInfo`` when a retry delay is known. The
details travel in the ``grpc-status-details-bin`` trailer, so REST (the
gateway) and gRPC clients read the same thing. ``status_details`` and
``field_violations`` read them back from a client-side ``grpc.RpcError``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, ClassVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status

ERROR_DOMAIN = "tips.app"
DETAILS_KEY = "grpc-status-details-bin"
_REASON = re.compile(r"^[A-Z][A-Z0-9_]{0,61}[A-Z0-9]$")


class DomainError(Exception):
    """Base of every error a service raises on purpose.

    ``reason`` is a stable UPPER_SNAKE identifier clients may switch on
    (defaults to the status code's name); ``metadata`` adds machine-readable
    context to the ``ErrorInfo`` detail. Never put secrets in either.
    """

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.code.name
        if not _REASON.match(self.reason):
            raise ValueError(f"error reason must be UPPER_SNAKE_CASE, got {self.reason!r}")
        self.metadata: dict[str, str] = dict(metadata or {})

    def details(self) -> list[Any]:
        """Detail messages beyond ErrorInfo; subclasses extend."""
        return []

    def to_status(self) -> status_pb2.Status:
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata
        )
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        for detail in [info, *self.details()]:
            packed = any_pb2.Any()
            packed.Pack(detail)
            status.details.append(packed)
        return status

    def to_grpc_status(self) -> grpc.Status:
        """The status to abort with: code, message and the details trailer."""
        result: grpc.Status = rpc_status.to_status(self.to_status())
        return result


def _retry_info(retry_after: timedelta | None) -> list[Any]:
    if retry_after is None:
        return []
    delay = duration_pb2.Duration()
    delay.FromTimedelta(retry_after)
    return [error_details_pb2.RetryInfo(retry_delay=delay)]


class InvalidArgument(DomainError):
    """The request is malformed; ``violations`` name each bad field."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(
        self,
        violations: Iterable[tuple[str, str]],
        message: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.violations: list[tuple[str, str]] = list(violations)
        if not message:
            message = "invalid argument: " + "; ".join(f"{f}: {d}" for f, d in self.violations)
        super().__init__(message, **kwargs)

    def details(self) -> list[Any]:
        return [
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in self.violations
                ]
            )
        ]


class NotFound(DomainError):
    """The named resource does not exist (or the caller may not know it does)."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(
        self,
        resource_name: str,
        message: str | None = None,
        *,
        resource_type: str = "",
        **kwargs: Any,
    ) -> None:
        self.resource_name = resource_name
        self.resource_type = resource_type
        super().__init__(message or f"{resource_name} not found", **kwargs)

    def details(self) -> list[Any]:
        return [
            error_details_pb2.ResourceInfo(
                resource_type=self.resource_type, resource_name=self.resource_name
            )
        ]


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED


class Aborted(DomainError):
    code = grpc.StatusCode.ABORTED


class Unimplemented(DomainError):
    code = grpc.StatusCode.UNIMPLEMENTED


class _Retryable(DomainError):
    def __init__(
        self, message: str, *, retry_after: timedelta | None = None, **kwargs: Any
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kwargs)

    def details(self) -> list[Any]:
        return _retry_info(self.retry_after)


class ResourceExhausted(_Retryable):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(_Retryable):
    code = grpc.StatusCode.UNAVAILABLE


# --- reading details back (clients, gateway, tests) -------------------------


def status_details(error: grpc.RpcError) -> status_pb2.Status:
    """The ``google.rpc.Status`` a failed call carried.

    Falls back to code and message alone when the server sent no details.
    """
    trailers: Sequence[tuple[str, str | bytes]] = ()
    trailing = getattr(error, "trailing_metadata", None)
    if callable(trailing):
        trailers = trailing() or ()
    for key, value in trailers:
        if key == DETAILS_KEY and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    message = details_fn() if callable(details_fn) else ""
    return status_pb2.Status(code=code.value[0], message=message or "")


def unpack_details(status: status_pb2.Status) -> list[Any]:
    """Unpack each known detail (ErrorInfo, BadRequest, ...) of a status."""
    known: tuple[type[Any], ...] = (
        error_details_pb2.ErrorInfo,
        error_details_pb2.BadRequest,
        error_details_pb2.ResourceInfo,
        error_details_pb2.RetryInfo,
        error_details_pb2.PreconditionFailure,
        error_details_pb2.QuotaFailure,
    )
    out: list[Any] = []
    for packed in status.details:
        for cls in known:
            if packed.Is(cls.DESCRIPTOR):
                message = cls()
                packed.Unpack(message)
                out.append(message)
    return out


def field_violations(error: grpc.RpcError) -> dict[str, str]:
    """``{field: description}`` from the BadRequest detail of a failed call."""
    result: dict[str, str] = {}
    for detail in unpack_details(status_details(error)):
        if isinstance(detail, error_details_pb2.BadRequest):
            for violation in detail.field_violations:
                result[violation.field] = violation.description
    return result


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo detail of a failed call, if any."""
    for detail in unpack_details(status_details(error)):
        if isinstance(detail, error_details_pb2.ErrorInfo):
            return detail
    return None

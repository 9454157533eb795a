"""The server interceptor every service runs behind.

For each RPC, in this order: continue the W3C trace from the metadata and
open a server span; set the inbound deadline (``kernel.deadline``); check
that the calling process may call the method (its mTLS name,
``kernel.access``) and verify the user's access token, if one is sent
(``kernel.tokens``), setting the caller (``kernel.identity``) for the
handler; map exceptions to statuses
(DomainError -> its code and details, NotImplementedError -> UNIMPLEMENTED,
the database unreachable -> UNAVAILABLE with RetryInfo, anything else ->
INTERNAL with nothing leaked, traceback logged); write one
access-log line (method, code, duration) and, when metrics are read, record
the RPC's duration by method and code (``kernel.metrics.record_rpc``).

A method no handler serves (an unknown service, or an unknown method of a
known one) is answered UNIMPLEMENTED here, with its access-log line too, so
that a client probing for methods is seen; none of the rest runs for it (no
span, no metrics: its path is the client's text, unbounded in number). The
log shows that path escaped and cut (``shown_path``).

grpc.aio interceptors only see the RpcMethodHandler, so the interceptor
wraps the handler's behaviour for each of the four call shapes.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace

from kernel import deadline, metrics, telemetry
from kernel.access import CallerPolicy
from kernel.db import is_unavailable
from kernel.errors import DomainError, Unavailable
from kernel.identity import Caller, authorization_of, set_caller
from kernel.tls import peer_name
from kernel.tokens import TokenVerifier

access_log = logging.getLogger("tips.access")
log = logging.getLogger("tips.server")

# Probes and tooling: logged at DEBUG so access logs stay readable.
_QUIET_PREFIXES = ("/grpc.health.", "/grpc.reflection.")
# An unknown method's path, as the access log shows it, is cut past this.
SHOWN_PATH_CHARS = 200

Behaviour = Callable[..., Any]

# Downstream failures passed on as they are (the caller may retry); any other
# error a downstream call raises is this service's bug: INTERNAL.
_PASSED_ON = frozenset(
    {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
)


# What an RPC answers when its database call found the server gone.
STORE_UNAVAILABLE = Unavailable(
    "the database is unavailable; retry later",
    reason="STORE_UNAVAILABLE",
    retry_after=timedelta(seconds=1),
)


class _Outcome:
    """What the access log reports about one RPC."""

    def __init__(self) -> None:
        self.code = grpc.StatusCode.OK
        self.caller: Caller | None = None


async def _fail(context: grpc.aio.ServicerContext[Any, Any], method: str, exc: Exception) -> None:
    """Abort the RPC with the status ``exc`` maps to (never returns)."""
    if isinstance(exc, DomainError):
        status = exc.to_grpc_status()
        await context.abort(status.code, status.details, status.trailing_metadata)
    if isinstance(exc, NotImplementedError):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented yet")
    if is_unavailable(exc):
        # PostgreSQL restarting or unreachable: the caller retries, it is no bug of ours.
        log.warning("database unavailable in %s", method, extra={"error": type(exc).__name__})
        status = STORE_UNAVAILABLE.to_grpc_status()
        await context.abort(status.code, status.details, status.trailing_metadata)
    code = _code_for(exc)
    if code is not grpc.StatusCode.INTERNAL:  # a downstream call timed out or was unreachable
        log.warning("downstream call failed in %s", method, extra={"code": code.name})
        await context.abort(code, f"a downstream call failed: {code.name}")
    log.error("unhandled error in %s", method, exc_info=exc, extra={"rpc_method": method})
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


class ServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Tracing, deadline, who calls (process and user), error mapping and access log."""

    def __init__(self, *, callers: CallerPolicy, verifier: TokenVerifier) -> None:
        self._tracer = telemetry.tracer("tips.grpc.server")
        self._callers = callers
        self._verifier = verifier
        # method -> (the handler, its wrapped form): built once per method, not per call.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def _admit(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any], outcome: _Outcome
    ) -> None:
        """Check the calling process, verify the user's token, set the caller."""
        self._callers.check(method, peer_name(context))
        authorization = authorization_of(context.invocation_metadata())
        caller = None if authorization is None else await self._verifier.verify(authorization)
        outcome.caller = caller
        set_caller(caller)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:  # no such method: answered, and logged, by _unknown
            return _unknown(handler_call_details.method)
        method: str = handler_call_details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                self._streaming(method, handler.stream_stream),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(method, handler.unary_stream),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(method, handler.stream_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            self._unary(method, handler.unary_unary),
            handler.request_deserializer,
            handler.response_serializer,
        )

    @contextmanager
    def _scope(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Iterator[_Outcome]:
        """Span, caller, deadline and the access-log line around one RPC."""
        metadata = tuple(context.invocation_metadata() or ())
        name = method.lstrip("/")
        service, _, rpc = name.rpartition("/")
        outcome = _Outcome()
        start = time.perf_counter()
        span = self._tracer.start_span(
            name,
            context=telemetry.extract_metadata(metadata),
            kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc},
        )
        # Set, never reset: grpc.aio gives each RPC its own contextvars.Context,
        # and a cancelled stream is closed from another Context, where
        # resetting a token would raise.
        otel_context.attach(trace.set_span_in_context(span))
        set_caller(None)
        deadline.set_remaining(context.time_remaining())
        try:
            yield outcome
        finally:
            span.set_attribute("rpc.grpc.status_code", outcome.code.value[0])
            if outcome.code is not grpc.StatusCode.OK:
                span.set_status(trace.StatusCode.ERROR, outcome.code.name)
            span.end()
            seconds = time.perf_counter() - start
            if metrics.enabled():
                metrics.record_rpc(method, outcome.code.name, seconds)
            _log_rpc(method, name, outcome.code, seconds, span, outcome.caller, context)

    def _unary(self, method: str, inner: Behaviour) -> Behaviour:
        name = method.lstrip("/")

        async def behaviour(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            with self._scope(method, context) as outcome:
                try:
                    await self._admit(method, context, outcome)
                    result = await _call(inner, request, context)
                except (asyncio.CancelledError, grpc.aio.AbortError):
                    outcome.code = _code_of(context, grpc.StatusCode.CANCELLED)
                    raise
                except Exception as exc:
                    outcome.code = _code_for(exc)
                    await _fail(context, name, exc)
                outcome.code = _code_of(context, grpc.StatusCode.OK)
                return result

        return behaviour

    def _streaming(self, method: str, inner: Behaviour) -> Behaviour:
        name = method.lstrip("/")

        async def behaviour(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            with self._scope(method, context) as outcome:
                try:
                    await self._admit(method, context, outcome)
                    result = inner(request, context)
                    if inspect.isawaitable(result):
                        # A handler that writes with context.write().
                        await result
                    elif hasattr(result, "__aiter__"):
                        async for item in result:
                            yield item
                    else:  # a plain generator: only the generated base does this
                        for item in result:
                            yield item
                except (asyncio.CancelledError, grpc.aio.AbortError, GeneratorExit):
                    outcome.code = _code_of(context, grpc.StatusCode.CANCELLED)
                    raise
                except Exception as exc:
                    outcome.code = _code_for(exc)
                    await _fail(context, name, exc)
                outcome.code = _code_of(context, grpc.StatusCode.OK)

        return behaviour


def _log_rpc(
    method: str,
    name: str,
    code: grpc.StatusCode,
    seconds: float,
    span: trace.Span,
    caller: Caller | None,
    context: grpc.aio.ServicerContext[Any, Any],
) -> None:
    """The access-log line of one RPC: ``method`` as called, ``name`` as shown, and
    the peer's address (who probes for methods, who calls too often)."""
    level = logging.DEBUG if method.startswith(_QUIET_PREFIXES) else logging.INFO
    if access_log.isEnabledFor(level):  # its fields cost more than this check
        access_log.log(
            level,
            "rpc",
            extra={
                "rpc_method": name,
                "code": code.name,
                "duration_ms": round(seconds * 1000, 3),
                "trace_id": format(span.get_span_context().trace_id, "032x"),
                "peer": context.peer(),
                **({"user": caller.user} if caller else {}),
            },
        )


def _unknown(method: str) -> grpc.RpcMethodHandler:
    """A method no handler serves: UNIMPLEMENTED, as the server answers it, and
    its access-log line (the trace the caller sent, if any). Made per call and
    never kept: the paths are the client's. Request-streaming, so that it runs
    at once, whatever the request carries."""

    async def behaviour(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        start = time.perf_counter()
        try:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {method}")
        finally:
            seconds = time.perf_counter() - start
            remote = telemetry.extract_metadata(context.invocation_metadata())
            shown = shown_path(method.lstrip("/"))
            code = grpc.StatusCode.UNIMPLEMENTED
            span = trace.get_current_span(remote)
            _log_rpc(method, shown, code, seconds, span, None, context)

    return grpc.stream_unary_rpc_method_handler(behaviour)


def shown_path(path: str) -> str:
    """A method path the client chose, as a log line may carry it: every
    character but letters, digits, ``/`` and ``_.-~`` percent-encoded (UTF-8),
    so no newline, space or ``=`` can start a line or a field of its own; past
    ``SHOWN_PATH_CHARS`` cut, with the length it had."""
    shown = quote(path[:SHOWN_PATH_CHARS], safe="/", errors="backslashreplace")
    if len(path) <= SHOWN_PATH_CHARS and len(shown) <= SHOWN_PATH_CHARS:
        return shown
    return f"{shown[:SHOWN_PATH_CHARS]}...[cut:{len(path)}chars]"


async def _call(inner: Behaviour, request: Any, context: Any) -> Any:
    if inspect.iscoroutinefunction(inner):
        return await inner(request, context)
    # Sync handlers (generated base servicers) run off the event loop.
    result = await asyncio.to_thread(inner, request, context)
    return await result if inspect.isawaitable(result) else result


def _code_for(exc: Exception) -> grpc.StatusCode:
    if isinstance(exc, DomainError):
        return exc.code
    if isinstance(exc, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED
    if isinstance(exc, grpc.aio.AioRpcError) and exc.code() in _PASSED_ON:
        return exc.code()  # type: ignore[no-any-return]
    if is_unavailable(exc):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


def _code_of(
    context: grpc.aio.ServicerContext[Any, Any], default: grpc.StatusCode
) -> grpc.StatusCode:
    """The code a handler set itself (set_code / abort), else ``default``."""
    try:
        code = context.code()
    except Exception:  # older runtimes lack code()
        return default
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):  # the aio context reports the raw integer
        return next((c for c in grpc.StatusCode if c.value[0] == code), default)
    return default

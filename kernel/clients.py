"""Channels to other services: mutual TLS, deadline, trace and identity propagation.

``channel(settings, "profile")`` returns one cached ``grpc.aio.Channel`` per
address and event loop. It presents this process's certificate and checks
the server's is the service named (``kernel.tls``). Its interceptor gives
every call:

- a timeout of min(time left on the inbound call, the explicit timeout), or
  ``settings.default_deadline_seconds`` when neither exists, so a chain of
  calls never outlives the request that started it;
- the current W3C trace context (``traceparent``);
- the access token of the request being served (``authorization``), unless
  the call sets its own, so the next service verifies the user itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc

from kernel import deadline, telemetry
from kernel.identity import AUTHORIZATION_KEY, current_caller
from kernel.settings import Settings
from kernel.tls import secure_channel

_channels: dict[tuple[str, str, int], grpc.aio.Channel] = {}


def call_timeout(explicit: float | None, default: float) -> float:
    """The timeout a downstream call gets (see module docstring)."""
    left = deadline.remaining()
    if left is None:
        return explicit if explicit is not None else default
    return left if explicit is None else min(left, explicit)


def _metadata(existing: Sequence[tuple[str, Any]] | None) -> grpc.aio.Metadata:
    trace = dict(telemetry.inject_metadata())
    pairs = [(k, v) for k, v in existing or () if k not in trace]
    pairs.extend(trace.items())
    caller = current_caller()
    if caller is not None and not any(k == AUTHORIZATION_KEY for k, _ in pairs):
        pairs.extend(caller.to_metadata())
    return grpc.aio.Metadata(*pairs)


class _Propagate(
    grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.aio.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.aio.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    def __init__(self, default_timeout: float) -> None:
        self._default = default_timeout

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=call_timeout(details.timeout, self._default),
            metadata=_metadata(details.metadata),
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)

    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)

    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def channel_to(address: str, settings: Settings, server_name: str) -> grpc.aio.Channel:
    """A cached channel to ``server_name`` at ``address`` (host:port) with propagation."""
    key = (address, server_name, id(asyncio.get_running_loop()))
    cached = _channels.get(key)
    if cached is None:
        cached = secure_channel(
            address,
            settings,
            server_name=server_name,
            interceptors=[_Propagate(settings.default_deadline_seconds)],
        )
        _channels[key] = cached
    return cached


def channel(settings: Settings, service: str) -> grpc.aio.Channel:
    """A cached channel to another service of the mesh (``settings.addr_of``)."""
    return channel_to(settings.addr_of(service), settings, service)


async def close_channels() -> None:
    """Close every cached channel of this event loop (process shutdown)."""
    loop_id = id(asyncio.get_running_loop())
    for key in [k for k in _channels if k[2] == loop_id]:
        await _channels.pop(key).close()

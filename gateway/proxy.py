"""The per-request path: match -> auth -> request message -> upstream call -> JSON.

Served in front of Starlette (``gateway.app.EdgeApp``): a transcoded
request never goes through Starlette's middleware, routing or Request
objects, and nothing here walks descriptors (routes carry everything,
precomputed). Requests no route matches go on to Starlette (``/healthz``,
...), whose 404 handler asks ``Transcoder.allowed`` to tell 404 from 405.

A client that goes away cancels its upstream call: while the call runs, a
task waits on ``receive`` for ``http.disconnect`` and cancels it (the
backend sees CANCELLED at once instead of working to its deadline).

Every upstream call carries the request's trace (``gateway.telemetry``: a
SERVER span per request and a CLIENT span per upstream call when spans are
recorded, else one minted ``traceparent``); requests are timed by route and
status when metrics are read.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import gzip
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import grpc
from google.protobuf.message import Message
from google.rpc import status_pb2  # type: ignore[import-untyped]
from opentelemetry import context as otel_context
from opentelemetry import trace
from starlette.types import Message as AsgiMessage
from starlette.types import Receive, Scope, Send

from gateway import telemetry as edge
from gateway.errors import error_parts, status_of_rpc_error
from gateway.h2upstream import UpstreamError
from gateway.routing import Route, RouteTable
from gateway.streaming import json_values, metadata_headers, stream_response
from gateway.transcode import FORM, Bad, Codec, build_request, reads_body, request_from_json
from gateway.upstreams import Upstreams
from kernel.errors import DomainError, PermissionDenied
from kernel.identity import IDENTITY_KEYS, Caller
from kernel.telemetry import recording

log = logging.getLogger("tips.gateway")

Metadata = list[tuple[str, str | bytes]]
# A method served in the gateway itself (e.g. a screen composed from several
# services): (request, metadata, timeout seconds) -> response.
LocalHandler = Callable[[Message, Sequence[tuple[str, str | bytes]], float], Awaitable[Message]]

# gRPC servers take messages of 4 MiB by default; a JSON body is never smaller
# than its message, so a larger one would only fail upstream as RESOURCE_EXHAUSTED.
MAX_BODY_BYTES = 4 * 1024 * 1024
# Smaller JSON answers cost more to compress than they save on the wire.
GZIP_MIN_BYTES = 1024
_METADATA_PREFIX = "grpc-metadata-"
# What gRPC carries: keys of [0-9a-z_.-], non-binary values of printable ASCII.
# A header gRPC would refuse is skipped, as grpc-gateway does.
_METADATA_KEY = re.compile(r"^[0-9a-z_.-]+$")
_METADATA_VALUE = re.compile(r"^[\x20-\x7e]*$")
# Our services take 16 KiB of metadata in all (kernel.server.MAX_METADATA_BYTES):
# refuse before that, naming the header, instead of an upstream RESOURCE_EXHAUSTED;
# the 4 KiB left over carry the gateway's own (pseudo-headers, token, forwarding).
MAX_METADATA_VALUE_BYTES = 8 * 1024
MAX_METADATA_BYTES = 12 * 1024
# grpc-gateway's DefaultHeaderMatcher passes IANA's permanent request headers on as
# "grpcgateway-<name>" (runtime/context.go, isPermanentHTTPHeader). Left out here:
# Authorization, a credential with its own rules (Transcoder.handle); Cookie, a
# credential no service of ours reads (docs/gateway.md); Host, which Go's server takes
# out of the header map, so grpc-gateway never sends it (it goes as x-forwarded-host).
PERMANENT_HEADERS = frozenset(
    {
        "accept",
        "accept-charset",
        "accept-language",
        "accept-ranges",
        "cache-control",
        "content-type",
        "date",
        "expect",
        "from",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-schedule-tag-match",
        "if-unmodified-since",
        "max-forwards",
        "origin",
        "pragma",
        "referer",
        "user-agent",
        "via",
        "warning",
    }
)
# Every request looks each header up once: the metadata key is precomputed.
_PERMANENT_KEYS = {name: f"grpcgateway-{name}" for name in PERMANENT_HEADERS}
_FORM_TYPE = FORM.encode()
# A client that hangs up is noticed at most this long after its call began
# (the bound is 100 ms); calls that end sooner never start a watcher.
WATCH_AFTER_S = 0.02
# A deadline is at most a day: a larger one overflows gRPC's clock into "already expired".
MAX_TIMEOUT_S = 86400.0
_TIMEOUT = re.compile(r"^(\d{1,8})([HMSmun])$")
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_JSON = (b"content-type", b"application/json")
# Errors that carry the upstream's header metadata (h2upstream's and grpc.aio's).
_WITH_HEADERS = (UpstreamError, grpc.aio.AioRpcError)


class EdgeAuth(Protocol):
    """The agreed edge-auth interface (implemented in ``gateway.auth``)."""

    async def authenticate(self, authorization: str | None) -> Caller: ...

    async def close(self) -> None: ...


class Transcoder:
    """Serves every route of a table against its upstreams."""

    def __init__(
        self,
        table: RouteTable,
        codec: Codec,
        upstreams: Upstreams,
        *,
        auth: EdgeAuth | None,
        default_deadline_s: float,
        local: Mapping[str, LocalHandler] | None = None,
    ) -> None:
        self.table = table
        self.codec = codec
        self.upstreams = upstreams
        self.auth = auth
        self.default_deadline_s = default_deadline_s
        self.local = dict(local or {})

    def allowed(self, path: str) -> list[str]:
        return self.table.allowed(path)

    async def handle(
        self, scope: Scope, receive: Receive, send: Send, route: Route, values: dict[str, str]
    ) -> None:
        headers = _headers(scope)
        try:
            timeout = _timeout(headers.get("grpc-timeout"), self.default_deadline_s)
            metadata = _forwarded_metadata(scope, headers)
            if not route.public and self.auth is not None:
                caller = await self.auth.authenticate(headers.get("authorization"))
                _check_scopes(route, caller)
                values = _resolve_me(values, caller)
                # The token just verified, which every service verifies again.
                metadata.extend(caller.to_metadata())
            elif self.auth is None and "authorization" in headers:
                # A standalone gateway (no token check of its own): as grpc-gateway,
                # the backend gets the header and decides. On a mesh's public route
                # an unverified token is not passed on.
                metadata.append(("authorization", headers["authorization"]))
            query = scope.get("query_string", b"").decode("latin-1")
            if not recording():  # else each upstream call carries its CLIENT span's
                metadata.append(
                    ("traceparent", edge.minted_traceparent(headers.get("traceparent")))
                )
            if route.client_streaming:
                await self._stream_in(
                    receive, send, route, values, query, metadata, timeout, headers
                )
                return
            content_type = headers.get("content-type", "")
            reading = reads_body(route.plan, scope["method"], content_type)
            body = await _read_body(receive) if reading else b""
            request = build_request(self.codec, route.plan, values, query, body, content_type)
            if route.streaming:
                await self._stream(receive, send, route, request, metadata, timeout, headers)
                return
            response, header_md = await self._unary(receive, route, request, metadata, timeout)
            await _respond_json(send, route, response, header_md, headers)
        except ClientGone:
            return  # nobody to answer; the upstream call was cancelled
        except DomainError as exc:
            await _respond_status(send, exc.to_status())
        except grpc.RpcError as exc:
            # As grpc-gateway: the upstream's header metadata goes out on errors too.
            error_md = exc.initial_metadata() if isinstance(exc, _WITH_HEADERS) else None
            await _respond_status(send, status_of_rpc_error(exc), error_md or ())

    async def _unary(
        self,
        receive: Receive,
        route: Route,
        request: Message,
        metadata: Metadata,
        deadline_s: float,
    ) -> tuple[Any, Sequence[tuple[str, str | bytes]]]:
        local = self.local.get(route.grpc_path)
        if local is not None:
            task = asyncio.ensure_future(local(request, metadata, deadline_s))
            result = await _unless_gone(receive, task, task)
            if not isinstance(result, route.response_class):
                # Local handlers answer with generated classes; rendering plans
                # are keyed to the descriptor set's own classes.
                result = route.response_class.FromString(result.SerializeToString())
            return result, ()
        call = self.upstreams.unary(route.service, route.grpc_path, route.response_class.FromString)
        if call is None:
            raise _no_upstream(route)
        span, metadata = edge.client_span(route.grpc_path, metadata)
        try:
            pending = call(request, timeout=deadline_s, metadata=metadata)
            response = await _unless_gone(receive, pending, pending)
            header_md = (await pending.initial_metadata()) or ()
        except BaseException as exc:
            edge.end_client_span(span, exc)
            raise
        edge.end_client_span(span, None)
        return response, header_md

    async def _stream(
        self,
        receive: Receive,
        send: Send,
        route: Route,
        request: Message,
        metadata: Metadata,
        deadline_s: float,
        headers: Mapping[str, str],
    ) -> None:
        call = self.upstreams.server_stream(
            route.service, route.grpc_path, route.response_class.FromString
        )
        if call is None:
            raise _no_upstream(route)

        async def relay(carried: Metadata) -> None:
            pending = call(request, timeout=deadline_s, metadata=carried)
            await _relay_stream(receive, send, route, pending, headers)

        await edge.traced(route.grpc_path, metadata, relay)

    async def _stream_in(
        self,
        receive: Receive,
        send: Send,
        route: Route,
        values: dict[str, str],
        query: str,
        metadata: Metadata,
        deadline_s: float,
        headers: Mapping[str, str],
    ) -> None:
        """Client streaming and bidi: each JSON value of the body is a message upstream.

        Half duplex, as HTTP/1.1 clients send: the body's messages are written as
        they arrive, then the answer (one JSON, or NDJSON for bidi) is relayed.
        """
        make = self.upstreams.client_stream(
            route.service, route.grpc_path, route.response_class.FromString, bidi=route.streaming
        )
        if make is None:
            raise _no_upstream(route)

        async def stream(carried: Metadata) -> None:
            await self._stream_call(receive, send, route, make, values, query, carried,
                                    deadline_s, headers)  # fmt: skip

        await edge.traced(route.grpc_path, metadata, stream)

    async def _stream_call(
        self,
        receive: Receive,
        send: Send,
        route: Route,
        make: Any,
        values: dict[str, str],
        query: str,
        metadata: Metadata,
        deadline_s: float,
        headers: Mapping[str, str],
    ) -> None:
        call = make(timeout=deadline_s, metadata=metadata)
        try:
            async for value in json_values(_body_chunks(receive)):
                message = request_from_json(self.codec, route.plan, values, query, value)
                if not await call.write(message):
                    break  # the upstream ended the call: its status is the answer
            else:
                await call.done_writing()
        except BaseException:  # a bad value, the client gone, this request cancelled
            call.cancel()
            raise
        if route.streaming:
            await _relay_stream(receive, send, route, call, headers)
            return
        response = await _unless_gone(receive, call, call)
        await _respond_json(send, route, response, (await call.initial_metadata()) or (), headers)


def _being_cancelled() -> bool:
    """Whether the running task itself is being cancelled (not a call it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _relay_stream(
    receive: Receive, send: Send, route: Route, call: Any, headers: Mapping[str, str]
) -> None:
    """A streaming answer (NDJSON, SSE, or raw HttpBody), cancelled if the client leaves."""
    sse = "text/event-stream" in headers.get("accept", "")
    relay = stream_response(send, call, route.render, sse=sse, http_body=route.http_body)
    await _unless_gone(receive, relay, call)


class ClientGone(Exception):
    """The HTTP client disconnected before the answer: its upstream call was cancelled."""

    code = grpc.StatusCode.CANCELLED  # what its upstream call came to (gateway.telemetry)


class CallCancelled(DomainError):
    """The upstream call ended as CANCELLED without the client leaving."""

    code = grpc.StatusCode.CANCELLED


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_gone(receive: Receive, work: Awaitable[Any], call: Any) -> Any:
    """``await work``, cancelling ``call`` (an upstream call or a task) if the client leaves.

    The watcher starts only once the work has taken ``WATCH_AFTER_S``: most
    calls end sooner, and a task per request costs more than the transcoding.
    """
    loop = asyncio.get_running_loop()
    watcher: asyncio.Task[None] | None = None

    def watch() -> None:
        nonlocal watcher
        watcher = loop.create_task(_until_disconnect(receive))
        watcher.add_done_callback(lambda w: None if w.cancelled() else call.cancel())

    timer = loop.call_later(WATCH_AFTER_S, watch)
    try:
        return await work
    except asyncio.CancelledError:
        if watcher is not None and watcher.done() and not watcher.cancelled():
            raise ClientGone from None
        if _being_cancelled():
            raise  # this request is being cancelled
        # The work itself was cancelled (a local handler's own grpc.aio call, say).
        raise CallCancelled("the upstream call was cancelled") from None
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


async def serve_guarded(
    transcoder: Transcoder,
    scope: Scope,
    receive: Receive,
    send: Send,
    route: Route,
    values: dict[str, str],
) -> None:
    """``transcoder.handle``, with anything unforeseen answered as a 500 Status;
    observed (a span, a timing) when telemetry reads requests.

    (Starlette's error middleware would do it, at the cost of wrapping every send.)
    """
    if edge.observed():
        await _serve_observed(transcoder, scope, receive, send, route, values)
        return
    await _serve(transcoder, scope, receive, send, route, values)


async def _serve_observed(
    transcoder: Transcoder,
    scope: Scope,
    receive: Receive,
    send: Send,
    route: Route,
    values: dict[str, str],
) -> None:
    """``_serve`` inside the request's SERVER span (when recorded), timed by status."""
    start = time.perf_counter()
    status = edge.CLIENT_CLOSED  # until an answer starts

    async def observed_send(message: AsgiMessage) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    method, template = scope["method"], route.template.source
    span = token = None
    if recording():
        span = edge.server_span(method, template, scope["headers"])
        token = otel_context.attach(trace.set_span_in_context(span))
    try:
        await _serve(transcoder, scope, receive, observed_send, route, values)
    finally:
        if span is not None and token is not None:
            otel_context.detach(token)
            edge.end_server_span(span, status)
        edge.record_request(method, template, status, time.perf_counter() - start)


async def _serve(
    transcoder: Transcoder,
    scope: Scope,
    receive: Receive,
    send: Send,
    route: Route,
    values: dict[str, str],
) -> None:
    try:
        await transcoder.handle(scope, receive, send, route, values)
    except Exception:
        log.exception("transcoding failed", extra={"route": route.grpc_path})
        status = status_pb2.Status(code=grpc.StatusCode.INTERNAL.value[0], message="internal error")
        # If the answer had begun this fails too: the server then closes the connection.
        with contextlib.suppress(Exception):
            await _respond_status(send, status)


def _no_upstream(route: Route) -> DomainError:
    from kernel.errors import Unavailable

    return Unavailable(
        f"no upstream is configured for {route.service}",
        reason="NO_UPSTREAM",
        metadata={"service": route.service},
    )


def raw_path(scope: Scope) -> str:
    raw = scope.get("raw_path")
    if raw:
        text: str = raw.decode("latin-1").split("?", 1)[0]
        return text
    path: str = scope["path"]
    return path


def form_fallback(table: RouteTable, scope: Scope) -> tuple[Route, dict[str, str]] | None:
    """grpc-gateway's "path length fallback" (runtime/mux.go, ServeHTTP), for a request
    no route of its method matched: a POST of an HTML form is served by its path's GET
    route, the form's fields as query parameters. Only for exactly that Content-Type
    (the first one), as grpc-gateway compares it; X-HTTP-Method-Override is not read.
    """
    if scope["method"] != "POST":
        return None
    content_type = next((v for k, v in scope["headers"] if k.lower() == b"content-type"), None)
    if content_type != _FORM_TYPE:
        return None
    return table.match("GET", raw_path(scope))


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in scope["headers"]:
        name = key.decode("latin-1").lower()
        text = value.decode("latin-1")
        out[name] = f"{out[name]},{text}" if name in out else text
    return out


def _timeout(value: str | None, default: float) -> float:
    """grpc-gateway's ``Grpc-Timeout`` (``5S``, ``100m``, ...), else the default."""
    if value is None:
        return default
    m = _TIMEOUT.match(value.strip())
    if m is None:
        raise Bad("Grpc-Timeout", f"expected digits and a unit of H M S m u n, got {value!r}")
    return min(int(m.group(1)) * _TIMEOUT_UNITS[m.group(2)], MAX_TIMEOUT_S)


def _forwarded_metadata(scope: Scope, headers: Mapping[str, str]) -> Metadata:
    metadata: Metadata = []
    permanent: Metadata = []
    size = permanent_size = 0
    for name, value in headers.items():
        permanent_key = _PERMANENT_KEYS.get(name)
        if permanent_key is not None:
            # Printable ASCII (as _METADATA_VALUE, faster); else skipped, as grpc-gateway does.
            if value.isascii() and value.isprintable():
                permanent.append((permanent_key, value))
                permanent_size += len(permanent_key) + len(value)
        elif name.startswith(_METADATA_PREFIX):
            key = name[len(_METADATA_PREFIX) :]
            # Identity comes only from a verified token, never from a client header.
            if not key or key in IDENTITY_KEYS or key == "authorization" or key.startswith("grpc-"):
                continue
            if not _METADATA_KEY.match(key):
                continue
            header = f"Grpc-Metadata-{key}"
            if len(value) > MAX_METADATA_VALUE_BYTES:
                raise Bad(header, f"longer than {MAX_METADATA_VALUE_BYTES} bytes")
            size += len(key) + len(value)
            if size > MAX_METADATA_BYTES:
                raise Bad(header, f"Grpc-Metadata-* headers over {MAX_METADATA_BYTES} bytes in all")
            if key.endswith("-bin"):
                metadata.append((key, _binary_header(header, value)))
            elif _METADATA_VALUE.match(value):
                metadata.append((key, value))
    if size + permanent_size <= MAX_METADATA_BYTES:
        metadata.extend(permanent)
    else:
        _add_within_cap(metadata, permanent, size)
    client = scope.get("client")
    if client:
        forwarded = headers.get("x-forwarded-for")
        metadata.append(
            ("x-forwarded-for", f"{forwarded}, {client[0]}" if forwarded else str(client[0]))
        )
    host = headers.get("x-forwarded-host") or headers.get("host")
    if host and len(host) <= 256 and _METADATA_VALUE.match(host):
        metadata.append(("x-forwarded-host", host))
    return metadata


def _add_within_cap(metadata: Metadata, permanent: Metadata, size: int) -> None:
    """Permanent headers, after Grpc-Metadata-* (``size`` bytes), in the same cap.

    A browser sends them unasked, so one that does not fit is left out, not refused.
    """
    for key, value in permanent:
        cost = len(key) + len(value)
        if size + cost <= MAX_METADATA_BYTES:
            metadata.append((key, value))
            size += cost


def _binary_header(header: str, value: str) -> bytes:
    """A ``-bin`` header's bytes: base64, standard or URL-safe, padding optional."""
    padded = value.strip() + "=" * (-len(value.strip()) % 4)
    try:
        altchars = b"-_" if "-" in padded or "_" in padded else None
        return base64.b64decode(padded.encode("ascii"), altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        raise Bad(header, "a -bin header must be base64") from None


def _check_scopes(route: Route, caller: Caller) -> None:
    missing = [s for s in route.scopes if s not in caller.scopes]
    if missing:
        raise PermissionDenied(
            f"this route needs the scope(s) {', '.join(missing)}",
            reason="MISSING_SCOPE",
            metadata={"scopes": " ".join(missing)},
        )


def _resolve_me(values: dict[str, str], caller: Caller) -> dict[str, str]:
    """``users/me[/...]`` in a path variable names the caller."""
    out = values
    for key, value in values.items():
        if value == "users/me" or value.startswith("users/me/"):
            if out is values:
                out = dict(values)
            out[key] = caller.resource_name + value[len("users/me") :]
    return out


async def _body_chunks(receive: Receive) -> AsyncIterator[tuple[bytes, bool]]:
    """The body as ``(chunk, more_to_come)``, at most MAX_BODY_BYTES in all."""
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise Bad("body", f"larger than {MAX_BODY_BYTES} bytes")
        more = bool(message.get("more_body", False))
        yield chunk, more
        if not more:
            return


async def _respond_json(
    send: Send,
    route: Route,
    response: Any,
    header_md: Sequence[tuple[str, str | bytes]],
    headers: Mapping[str, str],
) -> None:
    if route.http_body is not None:
        # google.api.HttpBody: its bytes as they are, with its content type.
        raw = route.http_body(response)
        kind = (raw.content_type or "application/octet-stream").encode("latin-1", "replace")
        answer = [(b"content-type", kind), *metadata_headers(header_md)]
        await _respond(send, 200, raw.data, answer)
        return
    payload = json.dumps(route.render(response), separators=(",", ":")).encode()
    response_headers = [_JSON, *metadata_headers(header_md)]
    if len(payload) >= GZIP_MIN_BYTES and "gzip" in headers.get("accept-encoding", ""):
        payload = gzip.compress(payload, compresslevel=5)
        response_headers += [(b"content-encoding", b"gzip"), (b"vary", b"accept-encoding")]
    await _respond(send, 200, payload, response_headers)


async def _read_body(receive: Receive) -> bytes:
    return b"".join([chunk async for chunk, _ in _body_chunks(receive)])


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _respond_status(
    send: Send, status: status_pb2.Status, header_md: Sequence[tuple[str, str | bytes]] = ()
) -> None:
    code, body, headers = error_parts(status)
    await _respond(send, code, body, headers + metadata_headers(header_md))

"""The edge's spans and metrics: one trace per REST call, nearly free when nothing reads them.

Spans recorded (an exporter is configured, ``kernel.telemetry.recording()``):
each transcoded request is a SERVER span continuing the W3C ``traceparent``
the client sent, if any (``server_span``); each upstream call, on the edge's
HTTP/2 client or a screen's grpc.aio stub, is a CLIENT span under it whose
context goes upstream as ``traceparent`` (``client_span``, ``traced``). So a
REST call is one trace, the home screen's fan-out included.

Not recorded (``TIPS_OTEL_EXPORTER=none``, the default): no span object is
made. The edge mints the one ``traceparent`` every upstream call of the
request carries (``minted_traceparent``: the client's trace id when it sent
one, else a new one; not sampled, as the SDK's ALWAYS_OFF sampler would
answer), ~1 us, so the services' log lines of one request share a trace id.

Metrics read (``kernel.metrics.enabled()``): ``http.server.request.duration``
by method, route template and HTTP status (``record_request``). With neither,
a request costs one minted ``traceparent`` and two flag checks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from random import getrandbits
from typing import TypeVar

import grpc
from opentelemetry import trace
from opentelemetry.trace import Span

from kernel import metrics, telemetry

Metadata = Sequence[tuple[str, str | bytes]]
MetadataList = list[tuple[str, str | bytes]]
R = TypeVar("R")

TRACE_KEYS = frozenset({"traceparent", "tracestate"})
# The status recorded for a request whose client left before any answer
# (nginx's "client closed request"; HTTP has none).
CLIENT_CLOSED = 499

_tracer = trace.get_tracer("tips.gateway")
_duration = metrics.meter("tips.gateway").create_histogram(
    "http.server.request.duration",
    unit="s",
    description="Transcoded REST requests the edge served, by method, route template and "
    "HTTP status: their count is the request rate, the 5xx ones the errors",
    explicit_bucket_boundaries_advisory=metrics.SECONDS_BUCKETS,
)
# (method, route template, status) -> the attributes, built once.
_attributes: dict[tuple[str, str, int], dict[str, str | int]] = {}


def observed() -> bool:
    """Whether requests are observed at all (spans recorded or metrics read)."""
    return telemetry.recording() or metrics.enabled()


def minted_traceparent(client: str | None) -> str:
    """The unsampled ``traceparent`` of a request whose spans nobody records."""
    trace_id = 0
    if client is not None:
        carried = telemetry.extract_headers({"traceparent": client})
        trace_id = trace.get_current_span(carried).get_span_context().trace_id
    return f"00-{trace_id or getrandbits(128) or 1:032x}-{getrandbits(64) or 1:016x}-00"


def server_span(method: str, template: str, headers: Iterable[tuple[bytes, bytes]]) -> Span:
    """The SERVER span of one request, continuing the client's trace if it sent one."""
    carried = {}
    for key, value in headers:
        name = key.decode("latin-1").lower()
        if name in TRACE_KEYS:
            carried[name] = value.decode("latin-1")
    return _tracer.start_span(
        f"{method} {template}",
        context=telemetry.extract_headers(carried),
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": method, "http.route": template},
    )


def end_server_span(span: Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(trace.StatusCode.ERROR)
    span.end()


def record_request(method: str, template: str, status: int, seconds: float) -> None:
    key = (method, template, status)
    attributes = _attributes.get(key)
    if attributes is None:
        attributes = _attributes[key] = {
            "http.request.method": method,
            "http.route": template,
            "http.response.status_code": status,
        }
    _duration.record(seconds, attributes)


def client_span(path: str, metadata: MetadataList) -> tuple[Span | None, MetadataList]:
    """A CLIENT span for a call on ``path`` (``/pkg.Service/Method``) under the current
    span, and ``metadata`` carrying it; (None, ``metadata``) when spans are not recorded."""
    if not telemetry.recording():
        return None, metadata
    service, _, method = path.lstrip("/").rpartition("/")
    span = _tracer.start_span(
        path.lstrip("/"),
        kind=trace.SpanKind.CLIENT,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
    )
    carried: MetadataList = [(k, v) for k, v in metadata if k not in TRACE_KEYS]
    carried.extend(telemetry.inject_metadata(trace.set_span_in_context(span)))
    return span, carried


def end_client_span(span: Span | None, error: BaseException | None) -> None:
    """End a ``client_span`` with the call's outcome (``error``: what it raised)."""
    if span is None:
        return
    code = _code_of(error)
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code is not grpc.StatusCode.OK:
        span.set_status(trace.StatusCode.ERROR, code.name)
    span.end()


async def traced(
    path: str, metadata: Metadata, invoke: Callable[[MetadataList], Awaitable[R]]
) -> R:
    """``await invoke(metadata)``, a call on ``path``, as a ``client_span``."""
    span, carried = client_span(path, list(metadata))
    try:
        result = await invoke(carried)
    except BaseException as exc:
        end_client_span(span, exc)
        raise
    end_client_span(span, None)
    return result


def _code_of(error: BaseException | None) -> grpc.StatusCode:
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, grpc.RpcError):
        code = error.code()
        return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
    code = getattr(error, "code", None)  # DomainError's, and the proxy's ClientGone's
    if isinstance(code, grpc.StatusCode):
        return code
    if not isinstance(error, Exception):
        return grpc.StatusCode.CANCELLED  # the request's task was cancelled
    return grpc.StatusCode.UNKNOWN

"""OpenTelemetry tracing and W3C trace-context propagation.

``configure_telemetry`` installs one TracerProvider per process, and the
MeterProvider of ``kernel.metrics``. Even with no exporter (the default)
spans get real ids, so logs carry ``trace_id`` and the trace continues across
gRPC metadata (``inject_metadata`` / ``extract_metadata``) and NATS headers
(``inject_headers`` / ``extract_headers``); they are recorded only when an
exporter reads them (``recording()``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from kernel.metrics import configure_metrics, shutdown_metrics
from kernel.settings import Settings

_propagator = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None
_recording = False


def configure_telemetry(settings: Settings, service: str) -> TracerProvider:
    """Install the process's TracerProvider and MeterProvider (idempotent: first call wins).

    Raises ``kernel.metrics.MetricsEndpointError`` when the Prometheus port is taken.
    """
    global _provider, _recording
    if _provider is not None:
        return _provider
    # With no exporter nothing would read recorded spans: sample none, so a span
    # costs only its ids (trace context still propagates and reaches the logs).
    _recording = settings.otel_exporter != "none"
    sampler = ParentBased(ALWAYS_ON) if _recording else ALWAYS_OFF
    resource = Resource.create({"service.name": f"tips-{service}"})
    provider = TracerProvider(resource=resource, sampler=sampler)
    if settings.otel_exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif settings.otel_exporter == "otlp":
        # Imported here: the gRPC exporter is only needed when used.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otel_endpoint, insecure=True)
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider = provider
    configure_metrics(settings, resource)
    return provider


def recording() -> bool:
    """Whether spans are recorded (an exporter reads them): else only their ids travel."""
    return _recording


def shutdown_telemetry() -> None:
    """Flush and stop exporters (end of process)."""
    if _provider is not None:
        _provider.shutdown()
    shutdown_metrics()


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject_metadata(context: otel_context.Context | None = None) -> list[tuple[str, str]]:
    """gRPC metadata carrying the current trace, or ``context``'s (``traceparent``,
    ``tracestate``)."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=context)
    return list(carrier.items())


def extract_metadata(
    metadata: Iterable[tuple[str, str | bytes]] | None,
) -> otel_context.Context:
    """The trace context an inbound call's metadata carries."""
    carrier = {k.lower(): v for k, v in metadata or () if isinstance(v, str)}
    return _propagator.extract(carrier)


def inject_headers(headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Add the current trace context to message headers (NATS); returns them."""
    _propagator.inject(headers)
    return headers


def extract_headers(headers: Mapping[str, str] | None) -> otel_context.Context:
    """The trace context a message's headers carry (NATS)."""
    return _propagator.extract({k.lower(): v for k, v in (headers or {}).items()})


def current_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) in hex of the active span, if any."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")

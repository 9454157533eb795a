"""OpenTelemetry metrics: one MeterProvider per process, pushed over OTLP, scraped by Prometheus.

``configure_metrics`` (called by ``kernel.telemetry.configure_telemetry``)
installs the process's MeterProvider with the readers the settings name:

- ``otel_exporter=otlp``: pushed to ``otel_endpoint`` every ``metrics_export_seconds``;
- ``metrics_port``: served at ``http://<host>:<metrics_port>/metrics`` in
  Prometheus' text format, with the process's own CPU, memory and GC
  collectors from prometheus_client;
- ``otel_exporter=console``: printed every ``metrics_export_seconds``.

With no reader no provider is installed: every instrument stays the API's
no-op and a measurement costs a method call (decision 33; an SDK
measurement costs 6-13 us, more than a span).

Instruments are made with ``meter(name)`` at import time; the API binds
them to the provider once it is installed. Two families every process shares
live here: RED per RPC (``record_rpc``, from the server interceptor) and
consumer lag (``set_consumer_pending``, from the bus's durable consumers).
docs/operations.md lists every metric of the mesh.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource

from kernel.settings import Settings

log = logging.getLogger(__name__)

# Histogram buckets of durations, in seconds: sub-millisecond steps for the
# in-memory hot paths, up to the 10 s default deadline.
SECONDS_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075,
    0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip


class MetricsEndpointError(RuntimeError):
    """The Prometheus endpoint could not listen (the port is taken)."""


_provider: MeterProvider | None = None
_configured = False
_server: Any = None  # prometheus_client's WSGI server, when serving


def meter(name: str) -> Meter:
    """The meter of one part of the mesh (``tips.recommender``, ...)."""
    return metrics.get_meter(name)


def enabled() -> bool:
    """Whether measurements are recorded (some reader is configured)."""
    return _provider is not None


def configure_metrics(settings: Settings, resource: Resource) -> MeterProvider | None:
    """Install the process's MeterProvider (idempotent: first call wins); None: no reader."""
    global _provider, _configured, _server
    if _configured:
        return _provider
    _configured = True
    interval_ms = settings.metrics_export_seconds * 1000
    readers: list[MetricReader] = []
    if settings.otel_exporter == "otlp":
        # Imported here: the gRPC exporter is only needed when used.
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        exporter = OTLPMetricExporter(endpoint=settings.otel_endpoint, insecure=True)
        readers.append(PeriodicExportingMetricReader(exporter, export_interval_millis=interval_ms))
    elif settings.otel_exporter == "console":
        readers.append(
            PeriodicExportingMetricReader(
                ConsoleMetricExporter(), export_interval_millis=interval_ms
            )
        )
    if settings.metrics_port:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        try:
            _server, _ = start_http_server(settings.metrics_port, addr=settings.host)
        except OSError as exc:
            raise MetricsEndpointError(
                f"cannot serve metrics on {settings.host}:{settings.metrics_port}: {exc}"
            ) from None
        readers.append(PrometheusMetricReader())
        log.info(
            "serving metrics",
            extra={"address": f"http://{settings.host}:{settings.metrics_port}/metrics"},
        )
    if not readers:
        return None
    provider = MeterProvider(metric_readers=readers, resource=resource)
    metrics.set_meter_provider(provider)
    _provider = provider
    return provider


def shutdown_metrics() -> None:
    """Export what is left and stop the readers and the endpoint (end of process)."""
    global _server
    if _provider is not None:
        _provider.shutdown()
    if _server is not None:
        _server.shutdown()
        _server.server_close()
        _server = None


# --- RED per RPC (kernel.interceptors) ------------------------------------------------

_rpc_duration = meter("tips.grpc.server").create_histogram(
    "rpc.server.call.duration",
    unit="s",
    description="RPCs this process served, by method and status code: their count is the "
    "request rate, those with a code other than OK the errors, the buckets the durations",
    explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
)
# (method, code) -> the attributes, built once.
_rpc_attributes: dict[tuple[str, str], dict[str, str]] = {}


def record_rpc(method: str, code: str, seconds: float) -> None:
    """One RPC served: ``method`` is ``/pkg.Service/Method``, ``code`` its status's name."""
    key = (method, code)
    attributes = _rpc_attributes.get(key)
    if attributes is None:
        service, _, rpc = method.lstrip("/").rpartition("/")
        attributes = _rpc_attributes[key] = {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": rpc,
            "rpc.response.status_code": code,
        }
    _rpc_duration.record(seconds, attributes)


# --- consumer lag (kernel.bus) --------------------------------------------------------

# (stream, durable) -> messages not yet delivered to it, as of its last fetch.
_pending: dict[tuple[str, str], int] = {}


def set_consumer_pending(stream: str, durable: str, pending: int) -> None:
    """What a durable consumer's last fetch said was left for it in the stream."""
    _pending[(stream, durable)] = pending


def forget_consumer(stream: str, durable: str) -> None:
    """The consumer stopped in this process: its lag is no longer this process's."""
    _pending.pop((stream, durable), None)


def _observe_pending(options: CallbackOptions) -> Iterable[Observation]:
    return [
        Observation(
            pending,
            {
                "messaging.system": "nats",
                "messaging.destination.name": stream,
                "messaging.consumer.group.name": durable,
            },
        )
        for (stream, durable), pending in list(_pending.items())
    ]


meter("tips.bus").create_observable_gauge(
    "tips.bus.consumer.pending",
    callbacks=[_observe_pending],
    unit="{message}",
    description="Messages in the stream not yet delivered to the durable consumer "
    "(its lag), as of the consumer's last fetch",
)

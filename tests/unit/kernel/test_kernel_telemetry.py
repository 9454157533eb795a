"""W3C trace context survives gRPC metadata and NATS headers."""

from __future__ import annotations

import pytest
from opentelemetry import trace

from kernel.settings import load_settings
from kernel.telemetry import (
    configure_telemetry,
    extract_headers,
    extract_metadata,
    inject_headers,
    inject_metadata,
    tracer,
)

pytestmark = pytest.mark.unit


def test_round_trips_through_metadata_and_headers() -> None:
    configure_telemetry(load_settings(), "events")
    with tracer("tests").start_as_current_span("publish") as span:
        metadata = inject_metadata()
        headers = inject_headers({"Nats-Msg-Id": "e_1"})
    expected = span.get_span_context()
    assert dict(metadata)["traceparent"].startswith("00-")
    for ctx in (extract_metadata(metadata), extract_headers(headers)):
        seen = trace.get_current_span(ctx).get_span_context()
        assert (seen.trace_id, seen.span_id) == (expected.trace_id, expected.span_id)
    assert headers["Nats-Msg-Id"] == "e_1"


def test_nothing_injected_without_a_span() -> None:
    assert inject_metadata() == []
    assert not trace.get_current_span(extract_headers({})).get_span_context().is_valid

"""Logs are structured, carry trace ids, and never carry secrets."""

from __future__ import annotations

import io
import json
import logging

import pytest

from kernel.logging import MASK, JsonFormatter, RedactingFilter, redact_text, redact_value
from kernel.settings import load_settings
from kernel.telemetry import configure_telemetry, tracer

pytestmark = pytest.mark.unit

JWT = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiJ1XzEiLCJleHAiOjE3MDAwMDAwMDB9"
    ".c2lnbmF0dXJlLWJ5dGVzLWhlcmUtYW5kLW1vcmU"
)


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"got token {JWT} from apple", JWT),
        ("Authorization: Bearer abc123.def-456", "abc123"),
        ("header bearer opaqueToken99", "opaqueToken99"),
        ("login password=hunter2 ok", "hunter2"),
        ('{"refresh_token": "r-123", "x": 1}', "r-123"),
        ("client_secret=s3cr3t&code_verifier=v3r1f13r", "s3cr3t"),
        ("client_secret=s3cr3t&code_verifier=v3r1f13r", "v3r1f13r"),
        ("postgresql://svc:pa55@db:5432/tips", "pa55"),
    ],
)
def test_secrets_masked_in_text(text: str, secret: str) -> None:
    redacted = redact_text(text)
    assert secret not in redacted
    assert MASK in redacted


def test_harmless_text_untouched() -> None:
    text = "tips.events.v1.EventsService/Ingest users/u_1/tips/t_2 took 3.2 ms"
    assert redact_text(text) == text


def test_values_masked_by_key_recursively() -> None:
    value = {
        "access_token": "a",
        "Authorization": "x",
        "nested": {"id_token": "b", "user": "u_1", "list": [{"password": "c"}]},
        "google_refresh_token": "d",
    }
    assert redact_value("payload", value) == {
        "access_token": MASK,
        "Authorization": MASK,
        "nested": {"id_token": MASK, "user": "u_1", "list": [{"password": MASK}]},
        "google_refresh_token": MASK,
    }
    assert redact_value("secret", "anything") == MASK


def _logger() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter("profile"))
    logger = logging.getLogger("tests.kernel.logging")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_json_line_has_fields_extras_and_no_secrets() -> None:
    logger, stream = _logger()
    logger.info("signed in with %s", JWT, extra={"user": "u_1", "access_token": "tok"})
    entry = json.loads(stream.getvalue())
    assert entry["level"] == "INFO" and entry["logger"] == "tests.kernel.logging"
    assert entry["service"] == "profile" and entry["user"] == "u_1"
    assert entry["access_token"] == MASK
    assert JWT not in stream.getvalue()
    assert "trace_id" not in entry


def test_trace_ids_when_a_span_is_active() -> None:
    configure_telemetry(load_settings(), "profile")
    logger, stream = _logger()
    with tracer("tests").start_as_current_span("work") as span:
        logger.info("inside")
    entry = json.loads(stream.getvalue())
    assert entry["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert entry["span_id"] == format(span.get_span_context().span_id, "016x")


def test_tracebacks_are_redacted() -> None:
    logger, stream = _logger()
    try:
        raise RuntimeError(f"upstream said Bearer {JWT}")
    except RuntimeError:
        logger.exception("failed")
    assert JWT not in stream.getvalue()
    assert "RuntimeError" in json.loads(stream.getvalue())["exc"]

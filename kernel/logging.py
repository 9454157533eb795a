"""Structured logs: JSON lines (or readable text) with trace ids, redacted.

``configure_logging`` sends every record to stderr with ts, level, logger,
message, service, trace_id/span_id (when a span is active) and the record's
``extra=`` fields. Redaction always applies, in both formats: values under
secret-looking keys are replaced, and JWTs, ``Bearer``/``Basic`` credentials
and ``password=...`` style pairs are masked inside messages and tracebacks.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kernel.settings import Settings
from kernel.telemetry import current_ids

MASK = "[REDACTED]"

# Keys whose values are always secret (compared lower-case, "-" as "_").
SECRET_KEYS = frozenset(
    {
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "authorization",
        "password",
        "secret",
        "code_verifier",
        "client_secret",
        "api_key",
        "cookie",
        "set_cookie",
        "private_key",
    }
)
_SECRET_SUFFIXES = ("_token", "_secret", "_password")

# A JWT/JWS/JWE: its header is base64url JSON, so it starts "eyJ"; also any
# three long base64url segments (opaque signed tokens).
_JWT = re.compile(
    r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*)+"
    r"|\b[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}\b"
)
# Credentials inside URLs: scheme://user:password@host
_URL_CREDS = re.compile(r"(://[^:/@\s]+:)[^@/\s]+@")
_SCHEME = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
_PAIR = re.compile(
    r"(?i)([\"']?\b(?:[a-z_]*_)?(?:token|password|secret|code_verifier|authorization)"
    r"[\"']?\s*[:=]\s*[\"']?)([^\s\"',;&}]+)"
)

# LogRecord attributes that are not ``extra=`` fields.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def is_secret_key(key: str) -> bool:
    norm = key.lower().replace("-", "_")
    return norm in SECRET_KEYS or norm.endswith(_SECRET_SUFFIXES)


def redact_text(text: str) -> str:
    """Mask credentials inside free text."""
    text = _SCHEME.sub(lambda m: f"{m.group(1)} {MASK}", text)
    text = _JWT.sub(MASK, text)
    text = _URL_CREDS.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    return _PAIR.sub(lambda m: f"{m.group(1)}{MASK}", text)


def redact_value(key: str, value: Any) -> Any:
    """Redact one field: by key, then recursively through containers."""
    if is_secret_key(key):
        return MASK
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {str(k): redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value("", v) for v in value]
    return value


class RedactingFilter(logging.Filter):
    """Rewrites each record in place before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = str(record.msg)
        record.msg = redact_text(message)
        record.args = None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD:
                setattr(record, key, redact_value(key, value))
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self.service,
        }
        ids = current_ids()
        if ids:
            entry["trace_id"], entry["span_id"] = ids
        entry.update(_extras(record))
        if record.exc_info:
            entry["exc"] = redact_text(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        line = f"{ts} {record.levelname:<7} {self.service} {record.name}: {record.getMessage()}"
        fields = _extras(record)
        ids = current_ids()
        if ids:
            fields["trace_id"] = ids[0]
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + redact_text(self.formatException(record.exc_info))
        return line


def configure_logging(settings: Settings, service: str) -> None:
    """Route all logging to one redacting stderr handler (idempotent)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_tips", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._tips = True  # type: ignore[attr-defined]
    handler.addFilter(RedactingFilter())
    formatter = JsonFormatter if settings.log_format == "json" else TextFormatter
    handler.setFormatter(formatter(service))
    root.addHandler(handler)
    root.setLevel(settings.log_level)

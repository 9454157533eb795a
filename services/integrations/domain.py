"""Pure rules of the integrations service: names, validation, schedules, messages.

No I/O: the servicer checks the caller, these functions judge and convert,
the store persists.
"""

from __future__ import annotations

import hashlib
import random
import re
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from google.protobuf.duration_pb2 import Duration

from kernel.errors import InvalidArgument
from kernel.names import Pattern
from kernel.timestamps import optional_timestamp
from services.integrations.connectors.base import Connector
from services.integrations.settings import IntegrationsSettings
from tips.integrations.v1 import connection_pb2, provider_pb2

S = connection_pb2.ConnectionState
_CONNECTION_ID = re.compile(r"^[a-z0-9-]{1,63}$")
UPDATABLE = ("display_name", "paused", "sync_interval")


CONNECTION = Pattern("users/{user}/connections/{connection}")
PROVIDER = Pattern("providers/{provider}")


def connection_name(user_id: str, connection_id: str) -> str:
    return CONNECTION.format(user_id, connection_id)


def parse_connection_name(name: str, field: str = "name") -> tuple[str, str]:
    user_id, connection_id = CONNECTION.parse(name, field)
    return user_id, connection_id


def parse_provider_name(name: str, field: str) -> str:
    return PROVIDER.parse_one(name, field)


def check_connection_id(value: str, field: str = "connection_id") -> str:
    if not value:
        return "c" + secrets.token_hex(6)
    if not _CONNECTION_ID.match(value):
        raise InvalidArgument([(field, "must be 1 to 63 characters of [a-z0-9-]")])
    return value


def state_hash(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


def check_sync_interval(duration: Duration, connector: Connector, field: str) -> int | None:
    """Seconds of a requested interval (None: the provider default)."""
    seconds = duration.seconds
    if seconds == 0 and duration.nanos == 0:
        return None
    if seconds < 0 or duration.nanos < 0:
        raise InvalidArgument([(field, "must be positive")])
    minimum = int(connector.min_sync_interval.total_seconds())
    if seconds < minimum:
        raise InvalidArgument([(field, f"must be at least {minimum}s for {connector.id}")])
    if seconds > 7 * 86400:
        raise InvalidArgument([(field, "must be at most 7 days")])
    return seconds


def check_update_mask(paths: Sequence[str]) -> list[str]:
    if not paths:
        return list(UPDATABLE)
    bad = [p for p in paths if p not in UPDATABLE]
    if bad:
        raise InvalidArgument(
            [("update_mask", f"{', '.join(bad)}: only {', '.join(UPDATABLE)} can be updated")]
        )
    return list(dict.fromkeys(paths))


def interval_of(row: Any, connector: Connector) -> timedelta:
    if row.sync_interval_seconds:
        return timedelta(seconds=row.sync_interval_seconds)
    return connector.default_sync_interval


def next_scheduled(
    now: datetime, interval: timedelta, jitter: float, rng: random.Random | None = None
) -> datetime:
    """The next run after a success: the interval, moved by up to ±jitter of it."""
    r = rng or random
    return now + interval * (1 + r.uniform(-jitter, jitter))


def backoff(
    failures: int, settings: IntegrationsSettings, rng: random.Random | None = None
) -> timedelta:
    """Delay before retrying after ``failures`` consecutive failed runs (full jitter at the top)."""
    r = rng or random
    base = settings.integrations_backoff_base_seconds * 2 ** max(0, failures - 1)
    capped = min(base, settings.integrations_backoff_max_seconds)
    return timedelta(seconds=capped * r.uniform(0.8, 1.0))


def output_state(row: Any) -> int:
    if row.paused and row.state in (S.CONNECTION_STATE_ACTIVE, S.CONNECTION_STATE_ERROR):
        return int(S.CONNECTION_STATE_PAUSED)
    return int(row.state)


def _duration(value: timedelta) -> Duration:
    d = Duration()
    d.FromTimedelta(value)
    return d


def to_connection(row: Any) -> connection_pb2.Connection:
    state = output_state(row)
    msg = connection_pb2.Connection(
        name=connection_name(row.user_id, row.connection_id),
        provider=f"providers/{row.provider}",
        display_name=row.display_name,
        state=state,  # type: ignore[arg-type]
        paused=row.paused,
        account_label=row.account_label,
        granted_scopes=list(row.granted_scopes or []),
        consent_purpose=row.consent_purpose,
    )
    if row.sync_interval_seconds:
        msg.sync_interval.CopyFrom(_duration(timedelta(seconds=row.sync_interval_seconds)))
    for field, value in (
        ("create_time", row.create_time),
        ("update_time", row.update_time),
        ("authorize_time", row.authorize_time),
    ):
        ts = optional_timestamp(value)
        if ts is not None:
            getattr(msg, field).CopyFrom(ts)
    status = msg.sync_status
    status.records_synced = row.records_synced
    status.signals_emitted = row.signals_emitted
    status.consecutive_failures = row.consecutive_failures
    for field, value in (
        ("last_attempt_time", row.last_attempt_time),
        ("last_success_time", row.last_success_time),
    ):
        ts = optional_timestamp(value)
        if ts is not None:
            getattr(status, field).CopyFrom(ts)
    schedulable = state in (S.CONNECTION_STATE_ACTIVE, S.CONNECTION_STATE_ERROR)
    next_run = optional_timestamp(row.next_run_time) if schedulable else None
    if next_run is not None:
        status.next_run_time.CopyFrom(next_run)
    if row.last_error_code is not None:
        status.last_error.code = row.last_error_code
        status.last_error.message = row.last_error_message or ""
        error_time = optional_timestamp(row.last_error_time)
        if error_time is not None:
            status.last_error.error_time.CopyFrom(error_time)
    return msg


def to_provider(connector: Connector, settings: IntegrationsSettings) -> provider_pb2.Provider:
    return provider_pb2.Provider(
        name=f"providers/{connector.id}",
        display_name=connector.display_name,
        description=connector.description,
        signal_kinds=list(connector.signal_kinds),  # type: ignore[arg-type]
        consent_purpose=connector.consent_purpose,
        oauth_scopes=list(connector.scopes),
        default_sync_interval=_duration(connector.default_sync_interval),
        min_sync_interval=_duration(connector.min_sync_interval),
        icon_uri=connector.icon_uri,
        available=bool(settings.provider_client(connector.id).client_id),
    )

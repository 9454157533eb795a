"""Pure parts of the integrations service: vault, normalisers, schedules, headers."""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from kernel.profile_context import purpose_of
from services.integrations import domain
from services.integrations.connectors import fitbit, google_calendar
from services.integrations.connectors.base import MalformedRecord
from services.integrations.connectors.http import parse_retry_after
from services.integrations.connectors.registry import all_connectors
from services.integrations.settings import IntegrationsSettings
from services.integrations.vault import Envelope, KeyRing, UnknownKey, VaultError
from tips.events.v1 import signal_pb2

pytestmark = pytest.mark.unit
CONN = "users/u1/connections/c1"


def ring() -> KeyRing:
    return KeyRing({"k1": os.urandom(32), "k2": os.urandom(32)}, "k1")


def test_vault_round_trip_binds_owner_and_key_id() -> None:
    r = ring()
    sealed = r.seal(CONN, b"secret-token")
    assert sealed.key_id == "k1" and b"secret-token" not in sealed.ciphertext
    assert r.open(CONN, sealed) == b"secret-token"
    with pytest.raises(VaultError):
        r.open("users/u2/connections/c1", sealed)  # copied onto another row
    with pytest.raises(VaultError):
        r.open(CONN, Envelope("k2", sealed.wrapped_key, sealed.ciphertext))  # key id edited


def test_vault_rewrap_keeps_ciphertext_and_needs_the_old_key() -> None:
    r = ring()
    sealed = r.seal(CONN, b"t")
    moved = r.rewrap(CONN, sealed, "k2")
    assert moved.key_id == "k2" and moved.ciphertext == sealed.ciphertext
    assert r.open(CONN, moved) == b"t"
    with pytest.raises(UnknownKey):
        KeyRing({"k2": os.urandom(32)}, "k2").open(CONN, sealed)
    with pytest.raises(VaultError):
        KeyRing({"k1": os.urandom(32)}, "missing")


def test_kek_ring_setting_names_the_bad_key() -> None:
    settings = IntegrationsSettings(integrations_kek_ring={"bad": "c2hvcnQ="})
    with pytest.raises(Exception, match="bad"):
        settings.kek_ring()


def test_a_local_provider_is_refused_outside_dev_mode() -> None:
    local = {"fitbit": {"client_id": "c", "token_url": "http://127.0.0.1:9999/oauth/token"}}
    with pytest.raises(ValueError, match=r"\['fitbit'\]\.token_url.*TIPS_DEV_MODE=1"):
        IntegrationsSettings(integrations_providers=local, dev_mode=False)
    assert IntegrationsSettings(integrations_providers=local, dev_mode=True)
    real = {"fitbit": {"client_id": "c", "token_url": "https://api.fitbit.com/oauth2/token"}}
    assert IntegrationsSettings(integrations_providers=real, dev_mode=False)
    assert IntegrationsSettings(
        integrations_providers={"fitbit": {"client_id": "c"}}, dev_mode=False
    )


def test_retry_after_seconds_and_http_date() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("7", 60) == 7
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", 60, now) == 30
    assert parse_retry_after("garbage", 60) == 60
    assert parse_retry_after(None, 60) == 60


def test_calendar_event_normalised() -> None:
    event = {
        "id": "e1", "status": "confirmed", "updated": "2026-01-02T03:04:05.000Z",
        "start": {"dateTime": "2026-01-05T10:00:00+01:00"},
        "end": {"dateTime": "2026-01-05T11:00:00+01:00"},
        "transparency": "transparent", "attendees": [{}, {}],
    }  # fmt: skip
    signal = google_calendar.normalise(event, CONN)
    assert signal.client_signal_id == "gcal:e1:2026-01-02T03:04:05.000Z"
    assert signal.kind == signal_pb2.SIGNAL_KIND_CALENDAR_EVENT
    assert signal.source == signal_pb2.SIGNAL_SOURCE_CONNECTOR and signal.connection == CONN
    assert signal.start_time.ToDatetime(UTC) == datetime(2026, 1, 5, 9, tzinfo=UTC)
    payload = signal.calendar_event
    assert not payload.busy and payload.attendee_count == 2 and not payload.cancelled


def test_calendar_all_day_and_cancelled_without_times() -> None:
    day = google_calendar.normalise(
        {"id": "d", "start": {"date": "2026-01-05"}, "end": {"date": "2026-01-06"}}, CONN
    )
    assert day.calendar_event.all_day
    gone = google_calendar.normalise(
        {"id": "x", "status": "cancelled", "updated": "2026-01-02T00:00:00Z"}, CONN
    )
    assert gone.calendar_event.cancelled
    assert gone.start_time.ToDatetime(UTC) == datetime(2026, 1, 2, tzinfo=UTC)


@pytest.mark.parametrize(
    "event",
    [
        {"status": "confirmed", "start": {"date": "2026-01-01"}},
        {"id": "a"},
        {"id": "a", "start": {"dateTime": "not a time"}},
        {"id": "a", "start": {"dateTime": "2026-01-01T10:00:00"}},  # no offset
        "not an object",
    ],
)
def test_malformed_calendar_events_raise(event: object) -> None:
    with pytest.raises(MalformedRecord):
        google_calendar.normalise(event, CONN)


def test_fitbit_sleep_local_times_use_the_users_zone() -> None:
    log = {"logId": 5, "startTime": "2026-01-01T23:00:00.000", "endTime": "2026-01-02T07:00:00.000",
           "minutesAsleep": 450}  # fmt: skip
    signal = fitbit.normalise(log, CONN, timezone(timedelta(hours=-5)))
    assert signal.client_signal_id == "fitbit:sleep:5"
    assert signal.start_time.ToDatetime(UTC) == datetime(2026, 1, 2, 4, tzinfo=UTC)
    assert signal.sleep.asleep_minutes == 450
    for bad in (
        {"logId": "5"},
        {**log, "minutesAsleep": -1},
        {**log, "endTime": "2026-01-01T00:00:00"},
    ):
        with pytest.raises(MalformedRecord):
            fitbit.normalise(bad, CONN, UTC)
    # The IANA zone: the same wall-clock time is a different instant across DST.
    summer = {**log, "startTime": "2026-07-01T23:00:00.000", "endTime": "2026-07-02T07:00:00.000"}
    signal = fitbit.normalise(summer, CONN, ZoneInfo("America/New_York"))
    assert signal.start_time.ToDatetime(UTC) == datetime(2026, 7, 2, 3, tzinfo=UTC)


def test_backoff_grows_and_is_capped() -> None:
    settings = IntegrationsSettings(
        integrations_backoff_base_seconds=10, integrations_backoff_max_seconds=100
    )
    rng = random.Random(1)
    delays = [domain.backoff(n, settings, rng).total_seconds() for n in range(1, 8)]
    assert 8 <= delays[0] <= 10 and 16 <= delays[1] <= 20
    assert max(delays) <= 100 and delays[-1] >= 80


def test_jitter_stays_within_bounds() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    rng = random.Random(2)
    runs = [domain.next_scheduled(now, timedelta(hours=1), 0.1, rng) - now for _ in range(200)]
    assert all(timedelta(minutes=54) <= r <= timedelta(minutes=66) for r in runs)
    assert len(set(runs)) > 100


def test_update_mask_and_names() -> None:
    assert domain.check_update_mask([]) == ["display_name", "paused", "sync_interval"]
    with pytest.raises(Exception, match="update_mask"):
        domain.check_update_mask(["provider"])
    assert domain.parse_connection_name("users/u/connections/c") == ("u", "c")


def test_every_connector_names_a_real_consent() -> None:
    for connector in all_connectors().values():
        assert purpose_of(connector.consent_purpose) is not None, connector.id

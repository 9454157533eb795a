"""Connectors end to end: OAuth with PKCE, incremental syncs against stand-in
providers over real HTTP, the real events service (PostgreSQL + JetStream).

The stack (tests/support/integrations_stack.py, the ``stack`` fixture of this
folder's conftest.py): the integrations and events services, a stand-in
ProfileInternalService for the consent gate and ``ConsentChanged`` published
to the real TIPS_PROFILE stream by the test.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest

from kernel.errors import error_info, field_violations
from kernel.server import ServiceServer
from kernel.settings import Settings
from services.integrations.rewrap import rewrap_tokens
from services.integrations.service import SERVICE as INTEGRATIONS
from tests.support.integrations_stack import (
    Stack,
    connect,
    md,
    new_user,
    run_sync,
    stored_ids,
)
from tests.support.waiting import eventually, stream_events
from tips.events.v1 import events_pb2 as ev_events
from tips.integrations.v1 import connection_pb2
from tips.integrations.v1 import events_pb2 as int_events
from tips.integrations.v1 import integrations_service_pb2 as pb
from tips.profile.v1 import consent_pb2
from tips.profile.v1 import events_pb2 as profile_events
from tipsmesh.devproviders import CLIENT_SECRET

pytestmark = pytest.mark.integration

S = connection_pb2.ConnectionState
CALENDAR = "calendar-data-for-tips"
SLEEP = "sleep-data-for-tips"


def _event(
    eid: str, start: datetime, *, updated: str = "2026-01-01T00:00:00Z", **extra: Any
) -> dict[str, Any]:
    return {
        "kind": "calendar#event",
        "id": eid,
        "status": "confirmed",
        "updated": updated,
        "start": {"dateTime": start.isoformat()},
        "end": {"dateTime": (start + timedelta(hours=1)).isoformat()},
        **extra,
    }


async def streamed_ids(stack: Stack, user: str, expected: int) -> list[str]:
    """client_signal_ids of the user's SignalRecorded messages on TIPS_EVENTS."""

    async def found() -> list[str]:
        events = await stream_events(
            stack.nats_url, "TIPS_EVENTS", "tips.events.v1.signal_recorded",
            ev_events.SignalRecorded,
        )  # fmt: skip
        return [e.signal.client_signal_id for e in events if e.user == f"users/{user}"]

    return await eventually(found, lambda ids: len(ids) >= expected, within=30)


# --- the done-when test -------------------------------------------------------------------


async def test_calendar_incremental_sync_with_faults_stores_each_signal_once(stack: Stack) -> None:
    user = new_user()
    stack.profile.grant(user, CALENDAR)
    s = stack.standin
    now = datetime.now(UTC).replace(microsecond=0)
    for i in range(5):
        s.put_event(_event(f"ev{i}{user}", now + timedelta(hours=i)))
    s.put_raw(
        f"bad{user}", {"id": f"bad{user}", "status": "confirmed", "updated": "2026-01-01T00:00:00Z"}
    )
    name = await connect(stack, user, "google_calendar", "cal")

    # First sync: 429 (Retry-After 1 s, waited out), a 503, then an expired access token.
    s.faults.extend([(429, {"Retry-After": "1"}), (503, {})])
    s.expire_access_tokens()
    refreshes_before = s.token_requests.count("refresh_token")
    first = await run_sync(stack, name)
    assert first.result.outcome == connection_pb2.SYNC_OUTCOME_SUCCEEDED, first.result.error
    assert first.result.records_fetched == 6  # the malformed one fetched, skipped
    assert first.result.signals_emitted == 5
    assert s.token_requests.count("refresh_token") == refreshes_before + 1
    assert first.result.trigger == connection_pb2.SYNC_TRIGGER_INITIAL

    # Incremental: one edited, one cancelled (id and status only), one new.
    s.put_event(_event(f"ev1{user}", now + timedelta(hours=1), updated="2026-02-01T00:00:00Z"))
    s.put_raw(
        f"ev2{user}", {"id": f"ev2{user}", "status": "cancelled", "updated": "2026-02-02T00:00:00Z"}
    )
    s.put_event(_event(f"ev9{user}", now + timedelta(days=1)))
    requests_before = len(s.requests)
    second = await run_sync(stack, name)
    assert second.result.outcome == connection_pb2.SYNC_OUTCOME_SUCCEEDED, second.result.error
    assert second.result.records_fetched == 3
    assert second.result.signals_emitted == 3
    assert all("syncToken=" in url for url in s.requests[requests_before:])

    # The sync token goes stale: 410, then a full resync whose items are all duplicates.
    s.invalidate_sync_tokens()
    requests_before = len(s.requests)
    third = await run_sync(stack, name)
    assert third.result.outcome == connection_pb2.SYNC_OUTCOME_SUCCEEDED, third.result.error
    assert third.result.signals_emitted == 0
    assert third.result.records_fetched == 6  # 5 live events (ev2 cancelled) + malformed
    assert any("timeMin=" in url for url in s.requests[requests_before:])

    # Each signal is in the store once and on the stream once.
    stored = await stored_ids(stack, user)
    assert len(stored) == 8 and len(set(stored)) == 8
    streamed = await streamed_ids(stack, user, 8)
    assert sorted(streamed) == sorted(stored)

    got = await stack.api.GetConnection(pb.GetConnectionRequest(name=name), metadata=md(user))
    status = got.connection.sync_status
    assert status.records_synced == 15
    assert status.signals_emitted == 8
    assert status.consecutive_failures == 0
    assert status.HasField("last_success_time") and status.HasField("next_run_time")
    cancelled = await stack.db.fetchval(
        "SELECT count(*) FROM events.signals WHERE user_id = $1 AND client_signal_id LIKE $2",
        user, f"gcal:ev2{user}:2026-02-02%",
    )  # fmt: skip
    assert cancelled == 1


async def test_long_retry_after_ends_the_run_and_schedules_after_it(stack: Stack) -> None:
    user = new_user()
    stack.profile.grant(user, CALENDAR)
    name = await connect(stack, user, "google_calendar", "cal")
    stack.standin.faults.append((429, {"Retry-After": "300"}))
    before = datetime.now(UTC)
    run = await run_sync(stack, name)
    assert run.result.outcome == connection_pb2.SYNC_OUTCOME_FAILED
    assert run.result.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    status = run.connection.sync_status
    assert status.consecutive_failures == 1
    assert status.next_run_time.ToDatetime(UTC) >= before + timedelta(seconds=295)


async def test_repeated_server_errors_back_off_and_end_in_error_state(stack: Stack) -> None:
    user = new_user()
    stack.profile.grant(user, CALENDAR)
    name = await connect(stack, user, "google_calendar", "cal")
    delays = []
    for _ in range(3):
        stack.standin.faults.extend([(500, {})] * 3)
        start = datetime.now(UTC)
        run = await run_sync(stack, name)
        assert run.result.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
        delays.append(
            (run.connection.sync_status.next_run_time.ToDatetime(UTC) - start).total_seconds()
        )
    assert delays[0] < delays[1] < delays[2]
    assert run.connection.state == S.CONNECTION_STATE_ERROR
    assert run.connection.sync_status.consecutive_failures == 3
    ok = await run_sync(stack, name)
    assert ok.connection.state == S.CONNECTION_STATE_ACTIVE
    assert ok.connection.sync_status.consecutive_failures == 0


async def test_refused_refresh_revokes_the_connection(stack: Stack) -> None:
    user = new_user()
    stack.profile.grant(user, CALENDAR)
    name = await connect(stack, user, "google_calendar", "cal")
    stack.standin.expire_access_tokens()
    stack.standin.refresh_tokens.clear()
    run = await run_sync(stack, name)
    assert run.result.error.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert run.connection.state == S.CONNECTION_STATE_REVOKED
    assert not run.connection.sync_status.HasField("next_run_time")


async def test_revoked_consent_stops_fetching(stack: Stack) -> None:
    user = new_user()
    stack.profile.grant(user, CALENDAR)
    name = await connect(stack, user, "google_calendar", "cal")
    assert (await run_sync(stack, name)).result.outcome == connection_pb2.SYNC_OUTCOME_SUCCEEDED
    stack.profile.revoke(user, CALENDAR)
    event = profile_events.ConsentChanged(
        event_id=uuid.uuid4().hex, user=f"users/{user}",
        consent=f"users/{user}/consents/calendar", text_version="1",
        purpose=consent_pb2.CONSENT_PURPOSE_CALENDAR_DATA_FOR_TIPS,
        state=consent_pb2.CONSENT_STATE_REVOKED,
        previous_state=consent_pb2.CONSENT_STATE_GRANTED,
    )  # fmt: skip
    event.occur_time.GetCurrentTime()
    await stack.bus.publish(event, msg_id=event.event_id)
    # The consumer evicts the cached grant; no provider request happens after that.
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        requests_before = len(stack.standin.requests)
        run = await run_sync(stack, name)
        if run.result.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]:
            break
        assert asyncio.get_running_loop().time() < deadline, "revocation not seen"
        await asyncio.sleep(0.3)
    assert len(stack.standin.requests) == requests_before
    assert run.result.records_fetched == 0
    # Connecting again needs the consent too.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.api.StartConnection(
            pb.StartConnectionRequest(
                parent=f"users/{user}",
                connection=connection_pb2.Connection(provider="providers/google_calendar"),
            ),
            metadata=md(user),
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(refused.value)
    assert info is not None and info.reason == "CONSENT_REQUIRED"


async def test_no_token_in_plain_text_and_rewrap(stack: Stack) -> None:
    user = new_user()
    stack.profile.grant(user, SLEEP)
    name = await connect(stack, user, "fitbit", "sleep")
    # A pending authorization too (its PKCE verifier is sealed, its state hashed).
    pending = await stack.api.StartConnection(
        pb.StartConnectionRequest(
            parent=f"users/{user}",
            connection=connection_pb2.Connection(provider="providers/fitbit"),
            connection_id="pending",
        ),
        metadata=md(user),
    )
    state = parse_qs(urlsplit(pending.authorization_uri).query)["state"][0]
    secrets_ = [*stack.standin.issued, CLIENT_SECRET, state]
    tables = await stack.db.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'integrations'"
    )
    assert {"connections", "tokens", "oauth_states"} <= {t["table_name"] for t in tables}
    for table in tables:
        rows = await stack.db.fetch(f'SELECT * FROM integrations."{table["table_name"]}"')
        for row in rows:
            for column, value in row.items():
                as_text = str(value)
                as_bytes = (
                    bytes(value) if isinstance(value, bytes | memoryview) else as_text.encode()
                )
                for secret in secrets_:
                    assert secret not in as_text, f"{table['table_name']}.{column}"
                    assert secret.encode() not in as_bytes, f"{table['table_name']}.{column}"

    # Rewrap everything under k2 (admin RPC), then through the CLI function: idempotent.
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stack.api.RewrapTokens(pb.RewrapTokensRequest(target_key_id="k2"), metadata=md(user))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    result = await stack.api.RewrapTokens(
        pb.RewrapTokensRequest(target_key_id="k2"), metadata=md("ops", "admin")
    )
    assert result.rewrapped_count >= 2 and not result.failures
    keys = await stack.db.fetch("SELECT DISTINCT key_id FROM integrations.tokens")
    assert [k["key_id"] for k in keys] == ["k2"]
    again = await rewrap_tokens(stack.settings, "k2")
    assert again.rewrapped == 0 and again.unchanged >= result.rewrapped_count
    # Tokens still open (the ring holds both keys): a sync works.
    stack.standin.sleep_logs.append(
        {"logId": 99, "dateOfSleep": datetime.now(UTC).date().isoformat(),
         "startTime": (datetime.now(UTC) - timedelta(hours=8)).strftime("%Y-%m-%dT%H:%M:%S.000"),
         "endTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000"), "minutesAsleep": 420}
    )  # fmt: skip
    run = await run_sync(stack, name)
    assert run.result.outcome == connection_pb2.SYNC_OUTCOME_SUCCEEDED, run.result.error
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await stack.api.RewrapTokens(
            pb.RewrapTokensRequest(target_key_id="nope"), metadata=md("ops", "admin")
        )
    assert "target_key_id" in field_violations(unknown.value)


async def test_connection_lifecycle(stack: Stack) -> None:
    user, other = new_user(), new_user()
    stack.profile.grant(user, CALENDAR)
    name = await connect(stack, user, "google_calendar", "work")
    listed = await stack.api.ListConnections(
        pb.ListConnectionsRequest(parent=f"users/{user}"), metadata=md(user)
    )
    assert [c.name for c in listed.connections] == [name]
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stack.api.GetConnection(pb.GetConnectionRequest(name=name), metadata=md(other))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

    paused = await stack.api.UpdateConnection(
        pb.UpdateConnectionRequest(
            connection=connection_pb2.Connection(name=name, paused=True),
            update_mask={"paths": ["paused"]},
        ),
        metadata=md(user),
    )
    assert paused.connection.state == S.CONNECTION_STATE_PAUSED
    assert not paused.connection.sync_status.HasField("next_run_time")
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stack.api.UpdateConnection(
            pb.UpdateConnectionRequest(
                connection=connection_pb2.Connection(name=name), update_mask={"paths": ["provider"]}
            ),
            metadata=md(user),
        )
    assert "update_mask" in field_violations(bad.value)
    with pytest.raises(grpc.aio.AioRpcError) as too_fast:
        await stack.api.UpdateConnection(
            pb.UpdateConnectionRequest(
                connection=connection_pb2.Connection(name=name, sync_interval={"seconds": 10}),
                update_mask={"paths": ["sync_interval"]},
            ),
            metadata=md(user),
        )
    assert "connection.sync_interval" in field_violations(too_fast.value)
    with pytest.raises(grpc.aio.AioRpcError) as not_active:
        await stack.api.SyncConnection(pb.SyncConnectionRequest(name=name), metadata=md(user))
    assert not_active.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    resumed = await stack.api.UpdateConnection(
        pb.UpdateConnectionRequest(
            connection=connection_pb2.Connection(name=name, paused=False),
            update_mask={"paths": ["paused"]},
        ),
        metadata=md(user),
    )
    assert resumed.connection.state == S.CONNECTION_STATE_ACTIVE
    sync = await stack.api.SyncConnection(pb.SyncConnectionRequest(name=name), metadata=md(user))
    assert sync.sync_id

    revoked_before = len(stack.standin.revoked)
    await stack.api.DeleteConnection(pb.DeleteConnectionRequest(name=name), metadata=md(user))
    assert len(stack.standin.revoked) == revoked_before + 1
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await stack.api.GetConnection(pb.GetConnectionRequest(name=name), metadata=md(user))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    user_id = user
    left = await stack.db.fetchval(
        "SELECT count(*) FROM integrations.tokens WHERE user_id = $1", user_id
    )
    assert left == 0

    # ConnectionChanged(DELETED) reaches TIPS_INTEGRATIONS through the outbox.
    async def seen() -> list[int]:
        events = await stream_events(
            stack.nats_url, "TIPS_INTEGRATIONS", "tips.integrations.v1.connection_changed",
            int_events.ConnectionChanged,
        )  # fmt: skip
        return [int(e.change) for e in events if e.connection.name == name]

    changes = await eventually(
        seen, lambda found: int_events.CONNECTION_CHANGE_DELETED in found, within=30
    )
    assert changes[0] == int_events.CONNECTION_CHANGE_CONNECTED
    assert int_events.CONNECTION_CHANGE_PAUSED in changes
    assert changes[-1] == int_events.CONNECTION_CHANGE_DELETED


async def test_providers_are_listed(stack: Stack) -> None:
    listed = await stack.api.ListProviders(pb.ListProvidersRequest())
    assert [p.name for p in listed.providers] == [
        "providers/fitbit",
        "providers/fitbit_activity",
        "providers/google_calendar",
    ]
    assert all(p.available for p in listed.providers)
    one = await stack.api.GetProvider(pb.GetProviderRequest(name="providers/google_calendar"))
    assert one.provider.consent_purpose == CALENDAR
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stack.api.GetProvider(pb.GetProviderRequest(name="providers/nope"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_scheduler_syncs_fitbit_sleep_in_pages(stack: Stack, settings: Settings) -> None:
    user = new_user()
    stack.profile.grant(user, SLEEP)
    s = stack.standin
    s.sleep_logs.clear()  # the stand-in is one account, shared by the module's tests
    s.utc_offset_millis = 3_600_000  # the user is at UTC+1: local times shift by an hour
    today = datetime.now(UTC).date()
    for i in range(1, 5):
        day = today - timedelta(days=i)
        s.sleep_logs.append(
            {"logId": 1000 + i, "dateOfSleep": day.isoformat(), "minutesAsleep": 400 + i,
             "startTime": f"{(day - timedelta(days=1)).isoformat()}T23:00:00.000",
             "endTime": f"{day.isoformat()}T07:00:00.000", "efficiency": 90}
        )  # fmt: skip
    s.sleep_logs.append({"logId": "not-a-number", "dateOfSleep": today.isoformat()})
    # A replica with the scheduler on; the connection it syncs comes from the API.
    config = stack.settings.model_copy(
        update={"integrations_scheduler_enabled": True, "integrations_scheduler_poll_seconds": 0.2}
    )
    replica = ServiceServer(INTEGRATIONS, config, port=0)
    await replica.start()
    try:
        name = await connect(stack, user, "fitbit", "sleep")
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            got = await stack.api.GetConnection(
                pb.GetConnectionRequest(name=name), metadata=md(user)
            )
            status = got.connection.sync_status
            if status.HasField("last_success_time"):
                break
            assert asyncio.get_running_loop().time() < deadline, got
            await asyncio.sleep(0.2)
        # 5 records in 3 pages: pagination.next links are followed, not re-listed.
        assert status.records_synced == 5 and status.signals_emitted == 4
        interval = status.next_run_time.ToDatetime(UTC) - status.last_success_time.ToDatetime(UTC)
        assert timedelta(minutes=50) < interval < timedelta(minutes=70)  # 1 h ± 10 % jitter
        rows = await stack.db.fetch(
            "SELECT client_signal_id, start_time FROM events.signals WHERE user_id = $1", user
        )
        assert sorted(r["client_signal_id"] for r in rows) == [
            f"fitbit:sleep:{1000 + i}" for i in range(1, 5)
        ]
        first = min(r["start_time"] for r in rows)
        assert first.hour == 22  # 23:00 local at UTC+1
        # On demand: too soon after the last run for the provider's minimum interval.
        with pytest.raises(grpc.aio.AioRpcError) as soon:
            await stack.api.SyncConnection(pb.SyncConnectionRequest(name=name), metadata=md(user))
        assert soon.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await replica.stop(grace=0)
        s.utc_offset_millis = 0

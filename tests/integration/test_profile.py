"""The profile service over gRPC, against real PostgreSQL and NATS JetStream.

Profile get/update with masks and etags, consents with history, the read
model, ownership, erasure, and profiles created from ``UserSignedUp``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.type import dayofweek_pb2, timeofday_pb2

from kernel.bus import Bus, streams_for
from kernel.clients import close_channels
from kernel.errors import field_violations
from kernel.migrations import migrate
from kernel.server import ServiceServer
from kernel.settings import Settings
from services.profile.service import SERVICE as PROFILE
from services.profile.settings import ProfileSettings
from tests.support.streams import left_as_found
from tests.support.tokens import as_user
from tests.support.waiting import eventually, stream_events
from tips.auth.v1 import events_pb2 as auth_events
from tips.profile.v1 import consent_pb2, events_pb2, profile_pb2
from tips.profile.v1 import profile_service_pb2 as pb
from tips.profile.v1 import profile_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

T = TypeVar("T")
STREAMS = ("TIPS_PROFILE", "TIPS_AUTH")
CAL = consent_pb2.CONSENT_PURPOSE_CALENDAR_DATA_FOR_TIPS
APP = consent_pb2.CONSENT_SOURCE_APP


@dataclass
class Svc:
    api: pb_grpc.ProfileServiceStub
    internal: pb_grpc.ProfileInternalServiceStub
    db: asyncpg.Connection
    bus: Bus
    nats_url: str


@pytest.fixture(scope="module")
async def svc(settings: Settings, nats_url: str, database_url: str) -> AsyncIterator[Svc]:
    durable = f"profile-signups-t{secrets.token_hex(4)}"
    async with (
        left_as_found(nats_url, STREAMS, [("TIPS_AUTH", durable)]),
        _svc(settings, database_url, durable) as svc,
    ):
        yield svc


@contextlib.asynccontextmanager
async def _svc(settings: Settings, database_url: str, durable: str) -> AsyncIterator[Svc]:
    await migrate(settings, [PROFILE])
    svc_settings = ProfileSettings(
        **settings.model_copy(update={"log_format": "text"}).model_dump(),
        profile_signup_durable=durable,
    )
    bus = await Bus.connect(settings, "profile-test")
    # The auth service owns TIPS_AUTH; declare it so the test can publish sign-ups.
    await bus.ensure_streams(streams_for(auth_events.UserSignedUp))
    server = ServiceServer(PROFILE, svc_settings, port=0)
    db = await asyncpg.connect(database_url)
    try:
        await server.start()
        async with grpc.aio.insecure_channel(server.address) as channel:
            yield Svc(
                pb_grpc.ProfileServiceStub(channel),
                pb_grpc.ProfileInternalServiceStub(channel),
                db,
                bus,
                settings.nats_url,
            )
    finally:
        await server.stop(grace=0)
        await close_channels()
        await db.close()
        await bus.close()


def _user() -> str:
    return f"u_{secrets.token_hex(5)}"


def _md(user: str, *scopes: str) -> tuple[tuple[str, str], ...]:
    return as_user(user, *scopes)


def _window(day: int, start: int, end: int) -> profile_pb2.QuietHoursWindow:
    return profile_pb2.QuietHoursWindow(
        day_of_week=day,  # type: ignore[arg-type]
        start_time_of_day=timeofday_pb2.TimeOfDay(hours=start),
        end_time_of_day=timeofday_pb2.TimeOfDay(hours=end),
    )


async def _stream(nats_url: str, subject: str, message: Any) -> list[Any]:
    """Every message on ``subject`` in TIPS_PROFILE, decoded."""
    return await stream_events(nats_url, "TIPS_PROFILE", subject, message)


async def _update(
    svc: Svc, user: str, profile: profile_pb2.Profile, *paths: str
) -> profile_pb2.Profile:
    profile.name = f"users/{user}/profile"
    request = pb.UpdateProfileRequest(profile=profile)
    if paths:
        request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=paths))
    response = await svc.api.UpdateProfile(request, metadata=_md(user), timeout=10)
    return response.profile


async def _bad(
    call: Awaitable[Any], code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
) -> dict[str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call
    assert failed.value.code() == code, failed.value.details()
    return field_violations(failed.value)


# --- profile ------------------------------------------------------------------------------


async def test_get_creates_defaults_and_update_with_masks(svc: Svc) -> None:
    user = _user()
    got = (
        await svc.api.GetProfile(
            pb.GetProfileRequest(name=f"users/{user}/profile"), metadata=_md(user)
        )
    ).profile
    assert (got.time_zone, got.language_code, got.etag != "") == ("UTC", "en", True)
    assert got.HasField("create_time")

    updated = await _update(
        svc,
        user,
        profile_pb2.Profile(
            display_name="Ana",
            time_zone="Europe/Madrid",
            quiet_hours=[_window(dayofweek_pb2.MONDAY, 22, 7)],
            preferred_categories=["movement"],
            daily_tip_cap=4,
            email="ignored@example.com",
        ),
        *("display_name", "time_zone", "quiet_hours", "preferred_categories"),
        *("daily_tip_cap", "email"),
    )
    assert updated.display_name == "Ana" and updated.time_zone == "Europe/Madrid"
    assert updated.email == "" and updated.daily_tip_cap == 4
    assert updated.etag != got.etag

    # No mask: only the fields set in the request change.
    partial = await _update(svc, user, profile_pb2.Profile(muted_categories=["sleep"]))
    assert list(partial.muted_categories) == ["sleep"] and partial.display_name == "Ana"

    # '*' replaces every field: what is not sent goes back to its default.
    replaced = await _update(svc, user, profile_pb2.Profile(display_name="Bo"), "*")
    assert replaced.display_name == "Bo" and replaced.time_zone == "UTC"
    assert list(replaced.quiet_hours) == [] and replaced.daily_tip_cap == 0

    again = (
        await svc.api.GetProfile(
            pb.GetProfileRequest(name=f"users/{user}/profile"), metadata=_md(user)
        )
    ).profile
    assert again == replaced

    changed = await eventually(
        lambda: _stream(svc.nats_url, "tips.profile.v1.profile_changed", events_pb2.ProfileChanged),
        lambda evs: len([e for e in evs if e.user == f"users/{user}"]) >= 4,
    )
    mine = [e for e in changed if e.user == f"users/{user}"]
    assert mine[0].created
    assert list(mine[1].changed_fields.paths) == [
        "display_name",
        "time_zone",
        "quiet_hours",
        "preferred_categories",
        "daily_tip_cap",
    ]
    assert list(mine[2].changed_fields.paths) == ["muted_categories"]


@pytest.mark.parametrize(
    ("profile", "path", "field"),
    [
        (profile_pb2.Profile(display_name="x" * 101), "display_name", "profile.display_name"),
        (profile_pb2.Profile(time_zone="Mars/Olympus"), "time_zone", "profile.time_zone"),
        (profile_pb2.Profile(language_code="??"), "language_code", "profile.language_code"),
        (profile_pb2.Profile(daily_tip_cap=99), "daily_tip_cap", "profile.daily_tip_cap"),
        (
            profile_pb2.Profile(
                quiet_hours=[
                    _window(dayofweek_pb2.MONDAY, 1, 3),
                    _window(dayofweek_pb2.MONDAY, 2, 4),
                ]
            ),
            "quiet_hours",
            "profile.quiet_hours[1]",
        ),
        (
            profile_pb2.Profile(quiet_hours=[_window(dayofweek_pb2.MONDAY, 5, 5)]),
            "quiet_hours",
            "profile.quiet_hours[0].end_time_of_day",
        ),
        (
            profile_pb2.Profile(preferred_categories=["focus"], muted_categories=["focus"]),
            "*",
            "profile.preferred_categories[0]",
        ),
        (
            profile_pb2.Profile(muted_categories=["No!"]),
            "muted_categories",
            "profile.muted_categories[0]",
        ),
        (profile_pb2.Profile(), "favourite_colour", "update_mask.paths[0]"),
    ],
)
async def test_bad_values_are_rejected_naming_the_field(
    svc: Svc, profile: profile_pb2.Profile, path: str, field: str
) -> None:
    user = _user()
    before = await _update(svc, user, profile_pb2.Profile(display_name="Same"), "display_name")
    assert field in await _bad(_update(svc, user, profile, path))
    after = (
        await svc.api.GetProfile(pb.GetProfileRequest(name=before.name), metadata=_md(user))
    ).profile
    assert after == before


async def test_etag_mismatch_is_aborted(svc: Svc) -> None:
    user = _user()
    first = await _update(svc, user, profile_pb2.Profile(display_name="One"), "display_name")
    second = await _update(
        svc, user, profile_pb2.Profile(display_name="Two", etag=first.etag), "display_name"
    )
    assert second.display_name == "Two"
    stale = profile_pb2.Profile(display_name="Three", etag=first.etag)
    await _bad(_update(svc, user, stale, "display_name"), grpc.StatusCode.ABORTED)
    now = (
        await svc.api.GetProfile(pb.GetProfileRequest(name=first.name), metadata=_md(user))
    ).profile
    assert now.display_name == "Two"


# --- consents ------------------------------------------------------------------------------


def _consent(user: str, consent: str = "calendar-data-for-tips") -> str:
    return f"users/{user}/consents/{consent}"


async def test_consents_grant_revoke_history_and_read_model(svc: Svc) -> None:
    user = _user()
    listed = await svc.api.ListConsents(
        pb.ListConsentsRequest(parent=f"users/{user}"), metadata=_md(user)
    )
    assert len(listed.consents) == 8
    assert {c.state for c in listed.consents} == {consent_pb2.CONSENT_STATE_UNDECIDED}

    grant = pb.GrantConsentRequest(name=_consent(user), text_version="2025-01-15", source=APP)
    granted = (await svc.api.GrantConsent(grant, metadata=_md(user))).consent
    assert granted.state == consent_pb2.CONSENT_STATE_GRANTED and granted.purpose == CAL
    # The read model sees it at once.
    ctx = (
        await svc.internal.GetUserContext(pb.GetUserContextRequest(user=f"users/{user}"))
    ).user_context
    assert list(ctx.granted_purposes) == [CAL]
    # Granting the same version again changes nothing.
    assert (await svc.api.GrantConsent(grant, metadata=_md(user))).consent == granted

    revoke = pb.RevokeConsentRequest(name=_consent(user), source=consent_pb2.CONSENT_SOURCE_WEB)
    revoked = (await svc.api.RevokeConsent(revoke, metadata=_md(user))).consent
    assert (
        revoked.state == consent_pb2.CONSENT_STATE_REVOKED and revoked.text_version == "2025-01-15"
    )
    ctx = (
        await svc.internal.GetUserContext(pb.GetUserContextRequest(user=f"users/{user}"))
    ).user_context
    assert list(ctx.granted_purposes) == []

    email = pb.GrantConsentRequest(
        name=_consent(user, "email-notifications"), text_version="v2", source=APP
    )
    await svc.api.GrantConsent(email, metadata=_md(user))
    got = await svc.api.GetConsent(pb.GetConsentRequest(name=_consent(user)), metadata=_md(user))
    assert got.consent.state == consent_pb2.CONSENT_STATE_REVOKED

    history = await svc.api.ListConsentEvents(
        pb.ListConsentEventsRequest(parent=_consent(user, "-"), page_size=2), metadata=_md(user)
    )
    assert [e.state for e in history.consent_events] == [
        consent_pb2.CONSENT_STATE_GRANTED,
        consent_pb2.CONSENT_STATE_REVOKED,
    ]
    assert history.consent_events[0].purpose == consent_pb2.CONSENT_PURPOSE_EMAIL_NOTIFICATIONS
    rest = await svc.api.ListConsentEvents(
        pb.ListConsentEventsRequest(
            parent=_consent(user, "-"), page_size=2, page_token=history.next_page_token
        ),
        metadata=_md(user),
    )
    assert [e.state for e in rest.consent_events] == [consent_pb2.CONSENT_STATE_GRANTED]
    assert rest.consent_events[0].previous_state == consent_pb2.CONSENT_STATE_UNDECIDED
    assert not rest.next_page_token
    only_cal = await svc.api.ListConsentEvents(
        pb.ListConsentEventsRequest(parent=_consent(user)), metadata=_md(user)
    )
    assert len(only_cal.consent_events) == 2

    # The history is append-only, even for the service's own role.
    with pytest.raises(asyncpg.RaiseError):
        await svc.db.execute("UPDATE profile.consent_events SET state = 2 WHERE user_id = $1", user)

    changes = await eventually(
        lambda: _stream(svc.nats_url, "tips.profile.v1.consent_changed", events_pb2.ConsentChanged),
        lambda evs: len([e for e in evs if e.user == f"users/{user}"]) >= 3,
    )
    mine = [e for e in changes if e.user == f"users/{user}"]
    assert [(e.state, e.previous_state) for e in mine[:2]] == [
        (consent_pb2.CONSENT_STATE_GRANTED, consent_pb2.CONSENT_STATE_UNDECIDED),
        (consent_pb2.CONSENT_STATE_REVOKED, consent_pb2.CONSENT_STATE_GRANTED),
    ]
    assert len(mine) == 3


async def test_consent_bad_input(svc: Svc) -> None:
    user = _user()
    assert "text_version" in await _bad(
        svc.api.GrantConsent(
            pb.GrantConsentRequest(name=_consent(user), source=APP), metadata=_md(user)
        )
    )
    assert "source" in await _bad(
        svc.api.GrantConsent(
            pb.GrantConsentRequest(name=_consent(user), text_version="v1"), metadata=_md(user)
        )
    )
    assert "name" in await _bad(
        svc.api.GetConsent(
            pb.GetConsentRequest(name=_consent(user, "mind-reading")), metadata=_md(user)
        )
    )


async def test_other_users_data_is_refused(svc: Svc) -> None:
    alice, bob = _user(), _user()
    original = await _update(svc, alice, profile_pb2.Profile(display_name="Alice"), "display_name")
    denied = grpc.StatusCode.PERMISSION_DENIED
    calls = [
        svc.api.GetProfile(pb.GetProfileRequest(name=original.name), metadata=_md(bob)),
        svc.api.UpdateProfile(
            pb.UpdateProfileRequest(
                profile=profile_pb2.Profile(name=original.name, display_name="Bob")
            ),
            metadata=_md(bob),
        ),
        svc.api.ListConsents(pb.ListConsentsRequest(parent=f"users/{alice}"), metadata=_md(bob)),
        svc.api.GetConsent(pb.GetConsentRequest(name=_consent(alice)), metadata=_md(bob)),
        svc.api.GrantConsent(
            pb.GrantConsentRequest(name=_consent(alice), text_version="v1", source=APP),
            metadata=_md(bob),
        ),
        svc.api.RevokeConsent(
            pb.RevokeConsentRequest(name=_consent(alice), source=APP), metadata=_md(bob)
        ),
        svc.api.ListConsentEvents(
            pb.ListConsentEventsRequest(parent=_consent(alice, "-")), metadata=_md(bob)
        ),
        svc.api.DeleteUser(pb.DeleteUserRequest(name=f"users/{alice}"), metadata=_md(bob)),
        svc.api.GetErasure(pb.GetErasureRequest(name=f"users/{alice}/erasure"), metadata=_md(bob)),
    ]
    for call in calls:
        await _bad(call, denied)
    now = (
        await svc.api.GetProfile(pb.GetProfileRequest(name=original.name), metadata=_md(alice))
    ).profile
    assert now == original
    assert (
        await svc.db.fetchval("SELECT count(*) FROM profile.consents WHERE user_id = $1", alice)
        == 0
    )
    assert (
        await svc.db.fetchval("SELECT count(*) FROM profile.erasures WHERE user_id = $1", alice)
        == 0
    )


# --- erasure and sign-up --------------------------------------------------------------------


async def _rows(svc: Svc, user: str) -> int:
    total = 0
    for table in ("profiles", "consents", "consent_events"):
        total += await svc.db.fetchval(
            f"SELECT count(*) FROM profile.{table} WHERE user_id = $1", user
        )
    return int(total)


async def test_delete_user_purges_and_publishes_once(svc: Svc) -> None:
    user = _user()
    await _update(svc, user, profile_pb2.Profile(display_name="Gone soon"), "display_name")
    grant = pb.GrantConsentRequest(name=_consent(user), text_version="v1", source=APP)
    await svc.api.GrantConsent(grant, metadata=_md(user))
    assert await _rows(svc, user) >= 3

    erasure = (
        await svc.api.DeleteUser(pb.DeleteUserRequest(name=f"users/{user}"), metadata=_md(user))
    ).erasure
    assert erasure.name == f"users/{user}/erasure" and erasure.HasField("request_time")
    assert await _rows(svc, user) == 0
    again = (
        await svc.api.DeleteUser(pb.DeleteUserRequest(name=f"users/{user}"), metadata=_md(user))
    ).erasure
    assert again == erasure
    admin = _user()
    reported = await svc.api.GetErasure(
        pb.GetErasureRequest(name=erasure.name), metadata=_md(admin, "admin")
    )
    assert reported.erasure == erasure

    # Gone from the API and the read model; nothing recreates it.
    await _bad(
        svc.api.GetProfile(pb.GetProfileRequest(name=f"users/{user}/profile"), metadata=_md(user)),
        grpc.StatusCode.NOT_FOUND,
    )
    await _bad(svc.api.GrantConsent(grant, metadata=_md(user)), grpc.StatusCode.NOT_FOUND)
    batch = await svc.internal.BatchGetUserContexts(
        pb.BatchGetUserContextsRequest(users=[f"users/{user}"])
    )
    assert list(batch.missing_users) == [f"users/{user}"]
    assert await _rows(svc, user) == 0

    deleted = await eventually(
        lambda: _stream(svc.nats_url, "tips.profile.v1.user_deleted", events_pb2.UserDeleted),
        lambda evs: any(e.user == f"users/{user}" for e in evs),
    )
    await asyncio.sleep(1.0)  # a second publish, if any, would have landed by now
    deleted = await _stream(svc.nats_url, "tips.profile.v1.user_deleted", events_pb2.UserDeleted)
    assert [e.erasure for e in deleted if e.user == f"users/{user}"] == [erasure.name]


async def _publish_signup(svc: Svc, user: str, msg_id: str, name: str = "Zoë") -> None:
    event = auth_events.UserSignedUp(
        event_id=msg_id,
        user=f"users/{user}",
        identity=f"users/{user}/identities/g1",
        email=f"{user}@example.com",
        email_verified=True,
        display_name=name,
    )
    await svc.bus.publish(event, msg_id=msg_id)


async def test_signup_creates_profile_once(svc: Svc) -> None:
    user = _user()
    msg_id = secrets.token_hex(8)
    await _publish_signup(svc, user, msg_id)
    await eventually(
        lambda: svc.db.fetchval("SELECT count(*) FROM profile.profiles WHERE user_id = $1", user),
        lambda n: n == 1,
    )
    profile = (
        await svc.api.GetProfile(
            pb.GetProfileRequest(name=f"users/{user}/profile"), metadata=_md(user)
        )
    ).profile
    assert (profile.display_name, profile.email) == ("Zoë", f"{user}@example.com")
    # Redelivered (a new msg id, past the dedupe window) and a second sign-up: nothing changes.
    await _publish_signup(svc, user, secrets.token_hex(8), name="Other")
    await asyncio.sleep(1.5)
    assert (
        await svc.db.fetchval("SELECT count(*) FROM profile.profiles WHERE user_id = $1", user) == 1
    )
    same = (
        await svc.api.GetProfile(pb.GetProfileRequest(name=profile.name), metadata=_md(user))
    ).profile
    assert same == profile
    created = [
        e
        for e in await _stream(
            svc.nats_url, "tips.profile.v1.profile_changed", events_pb2.ProfileChanged
        )
        if e.user == f"users/{user}"
    ]
    assert [e.created for e in created] == [True]

    # CreateProfile (auth's synchronous path) is idempotent too.
    response = await svc.internal.CreateProfile(pb.CreateProfileRequest(parent=f"users/{user}"))
    assert not response.created and response.profile.display_name == "Zoë"


async def test_signup_after_lazy_profile_seeds_it(svc: Svc) -> None:
    user = _user()
    await svc.api.GetProfile(pb.GetProfileRequest(name=f"users/{user}/profile"), metadata=_md(user))
    await _publish_signup(svc, user, secrets.token_hex(8), name="Late")
    profile = await eventually(
        lambda: svc.api.GetProfile(
            pb.GetProfileRequest(name=f"users/{user}/profile"), metadata=_md(user)
        ),
        lambda r: r.profile.email != "",
    )
    assert profile.profile.display_name == "Late"
    ctx = (
        await svc.internal.GetUserContext(pb.GetUserContextRequest(user=f"users/{user}"))
    ).user_context
    assert ctx.profile.email == f"{user}@example.com"

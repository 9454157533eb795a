"""services.profile.domain and names: validation names the field, masks, quiet hours."""

from __future__ import annotations

import pytest
from google.protobuf import field_mask_pb2
from google.type import dayofweek_pb2, timeofday_pb2

from kernel.errors import InvalidArgument
from services.profile import domain, names
from tips.profile.v1 import consent_pb2, profile_pb2

pytestmark = pytest.mark.unit

MON, SUN = dayofweek_pb2.MONDAY, dayofweek_pb2.SUNDAY


def _w(day: int, start: tuple[int, int], end: tuple[int, int]) -> profile_pb2.QuietHoursWindow:
    return profile_pb2.QuietHoursWindow(
        day_of_week=day,  # type: ignore[arg-type]
        start_time_of_day=timeofday_pb2.TimeOfDay(hours=start[0], minutes=start[1]),
        end_time_of_day=timeofday_pb2.TimeOfDay(hours=end[0], minutes=end[1]),
    )


def _fields(profile: profile_pb2.Profile, *paths: str) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as failed:
        domain.validate(profile, paths)
    return dict(failed.value.violations)


def test_valid_profile_passes() -> None:
    profile = profile_pb2.Profile(
        display_name="Ana",
        time_zone="Europe/Madrid",
        language_code="es-ES",
        quiet_hours=[_w(MON, (22, 0), (7, 0)), _w(dayofweek_pb2.TUESDAY, (22, 0), (7, 0))],
        preferred_categories=["movement"],
        muted_categories=["sleep"],
        daily_tip_cap=5,
    )
    domain.validate(profile, domain.UPDATABLE)


@pytest.mark.parametrize(
    ("profile", "path"),
    [
        (profile_pb2.Profile(display_name="x" * 101), "profile.display_name"),
        (profile_pb2.Profile(display_name="a\nb"), "profile.display_name"),
        (profile_pb2.Profile(display_name=" Ana"), "profile.display_name"),
        (profile_pb2.Profile(time_zone="Mars/Olympus"), "profile.time_zone"),
        (profile_pb2.Profile(time_zone="europe/madrid"), "profile.time_zone"),
        (profile_pb2.Profile(time_zone="../../etc/passwd"), "profile.time_zone"),
        (profile_pb2.Profile(language_code="english!"), "profile.language_code"),
        (profile_pb2.Profile(daily_tip_cap=51), "profile.daily_tip_cap"),
        (profile_pb2.Profile(daily_tip_cap=-1), "profile.daily_tip_cap"),
        (profile_pb2.Profile(preferred_categories=["Bad Id"]), "profile.preferred_categories[0]"),
        (profile_pb2.Profile(muted_categories=["a", "a"]), "profile.muted_categories[1]"),
        (
            profile_pb2.Profile(preferred_categories=[f"c{i}" for i in range(21)]),
            "profile.preferred_categories",
        ),
        (
            profile_pb2.Profile(preferred_categories=["a", "focus"], muted_categories=["focus"]),
            "profile.preferred_categories[1]",
        ),
    ],
)
def test_bad_values_name_the_field(profile: profile_pb2.Profile, path: str) -> None:
    assert path in _fields(profile, *domain.UPDATABLE)


def test_quiet_hours_rules() -> None:
    bad_time = _w(MON, (9, 0), (9, 0))
    bad_time.end_time_of_day.minutes = 75
    cases = {
        "profile.quiet_hours[0].day_of_week": [_w(0, (9, 0), (10, 0))],
        "profile.quiet_hours[0].end_time_of_day": [bad_time],
        "profile.quiet_hours[1].end_time_of_day": [
            _w(MON, (1, 0), (2, 0)),
            _w(MON, (9, 0), (9, 0)),
        ],
        "profile.quiet_hours[0].start_time_of_day": [
            profile_pb2.QuietHoursWindow(
                day_of_week=MON, end_time_of_day=timeofday_pb2.TimeOfDay(hours=1)
            )
        ],
        # Monday 22:00-07:00 runs into Tuesday morning.
        "profile.quiet_hours[1]": [
            _w(MON, (22, 0), (7, 0)),
            _w(dayofweek_pb2.TUESDAY, (6, 0), (8, 0)),
        ],
        "profile.quiet_hours": [_w(MON, (1, 0), (2, 0))] * 22,
    }
    for path, windows in cases.items():
        assert path in _fields(profile_pb2.Profile(quiet_hours=windows), "quiet_hours"), path


def test_quiet_hours_wrap_the_week_and_allow_24() -> None:
    # Sunday 23:00-01:00 ends on Monday: overlaps Monday 00:30.
    found = _fields(
        profile_pb2.Profile(quiet_hours=[_w(SUN, (23, 0), (1, 0)), _w(MON, (0, 30), (2, 0))]),
        "quiet_hours",
    )
    assert "profile.quiet_hours[1]" in found
    ok = profile_pb2.Profile(
        quiet_hours=[_w(SUN, (23, 0), (1, 0)), _w(MON, (1, 0), (2, 0)), _w(MON, (0, 0), (0, 0))][:2]
    )
    domain.validate(ok, ["quiet_hours"])
    domain.validate(profile_pb2.Profile(quiet_hours=[_w(MON, (0, 0), (24, 0))]), ["quiet_hours"])


def test_mask_paths() -> None:
    patch = profile_pb2.Profile(display_name="A", email="x@y", daily_tip_cap=3)
    assert domain.mask_paths(None, patch) == ["display_name", "daily_tip_cap"]
    star = field_mask_pb2.FieldMask(paths=["*"])
    assert domain.mask_paths(star, patch) == list(domain.UPDATABLE)
    ignored = field_mask_pb2.FieldMask(paths=["email", "create_time", "time_zone"])
    assert domain.mask_paths(ignored, patch) == ["time_zone"]
    with pytest.raises(InvalidArgument) as failed:
        domain.mask_paths(field_mask_pb2.FieldMask(paths=["time_zone", "nope"]), patch)
    assert "update_mask.paths[1]" in dict(failed.value.violations)


def test_apply_update_resets_to_defaults_and_reports_changes() -> None:
    current = domain.default_profile("users/u/profile")
    current.time_zone = "Europe/Madrid"
    current.muted_categories.append("sleep")
    patch = profile_pb2.Profile(
        display_name="Bo", channels=profile_pb2.NotificationChannels(push_enabled=True)
    )
    updated = domain.apply_update(current, patch, domain.UPDATABLE)
    assert updated.time_zone == "UTC" and updated.language_code == "en"
    assert list(updated.muted_categories) == []
    assert updated.channels.push_enabled
    assert domain.changed_fields(current, updated) == [
        "display_name",
        "time_zone",
        "muted_categories",
        "channels",
    ]
    only_push = domain.apply_update(current, patch, ["channels.push_enabled"])
    assert domain.changed_fields(current, only_push) == ["channels"]


def test_etag_changes_with_content() -> None:
    a = domain.default_profile("users/u/profile")
    b = profile_pb2.Profile()
    b.CopyFrom(a)
    assert domain.etag_of(a) == domain.etag_of(b)
    b.display_name = "x"
    assert domain.etag_of(a) != domain.etag_of(b)


def test_consent_names_round_trip() -> None:
    purpose = consent_pb2.CONSENT_PURPOSE_CALENDAR_DATA_FOR_TIPS
    name = names.consent_name("u_1", purpose)
    assert name == "users/u_1/consents/calendar-data-for-tips"
    assert names.parse_consent_name(name) == ("u_1", purpose)
    assert names.parse_consent_name("users/u_1/consents/-", allow_all=True) == ("u_1", 0)
    for bad in ("users/u_1/consents/nope", "users//consents/x", "users/u_1/profile/x"):
        with pytest.raises(InvalidArgument):
            names.parse_consent_name(bad)


def _digest(enabled: bool, time: timeofday_pb2.TimeOfDay | None) -> profile_pb2.Profile:
    digest = profile_pb2.NotificationDigest(enabled=enabled)
    if time is not None:
        digest.delivery_time.CopyFrom(time)
    return profile_pb2.Profile(digest=digest)


def test_digest_rules_name_the_field() -> None:
    domain.validate(_digest(True, timeofday_pb2.TimeOfDay(hours=20, minutes=30)), ["digest"])
    domain.validate(_digest(False, None), ["digest"])  # off needs no time
    domain.validate(_digest(True, timeofday_pb2.TimeOfDay()), ["digest"])  # 00:00 is a time
    path = "profile.digest.delivery_time"
    assert path in _fields(_digest(True, None), "digest")
    for bad in (
        timeofday_pb2.TimeOfDay(hours=24),
        timeofday_pb2.TimeOfDay(hours=25),
        timeofday_pb2.TimeOfDay(hours=20, minutes=60),
        timeofday_pb2.TimeOfDay(hours=-1),
        timeofday_pb2.TimeOfDay(hours=8, nanos=5),
    ):
        assert path in _fields(_digest(True, bad), "digest.delivery_time"), bad


def test_digest_masks_and_updates() -> None:
    patch = _digest(True, timeofday_pb2.TimeOfDay(hours=8))
    mask = field_mask_pb2.FieldMask(paths=["digest.enabled", "digest.delivery_time"])
    assert domain.mask_paths(mask, patch) == ["digest.enabled", "digest.delivery_time"]
    assert domain.mask_paths(None, patch) == ["digest"]
    with pytest.raises(InvalidArgument) as unknown:
        domain.mask_paths(field_mask_pb2.FieldMask(paths=["digest.time"]), patch)
    assert dict(unknown.value.violations).keys() == {"update_mask.paths[0]"}
    current = domain.default_profile("users/u1/profile")
    on = domain.apply_update(current, patch, ["digest"])
    assert on.digest.enabled and on.digest.delivery_time.hours == 8
    assert domain.changed_fields(current, on) == ["digest"]
    # Only the switch: the time stays; clearing the whole field means no digest.
    off = domain.apply_update(on, _digest(False, None), ["digest.enabled"])
    assert not off.digest.enabled and off.digest.delivery_time.hours == 8
    cleared = domain.apply_update(on, profile_pb2.Profile(), ["digest"])
    assert not cleared.HasField("digest")
    retimed = domain.apply_update(on, _digest(False, None), ["digest.delivery_time"])
    assert retimed.digest.enabled and not retimed.digest.HasField("delivery_time")
    with pytest.raises(InvalidArgument):  # on without a time
        domain.validate(retimed, ["digest.delivery_time"])

"""Which consent each signal kind needs before events stores it."""

from __future__ import annotations

from kernel.profile_context import ALL_PURPOSES, consent_id, purpose_of
from services.events import domain
from tips.events.v1 import signal_pb2
from tips.profile.v1 import consent_pb2

K = signal_pb2.SignalKind
P = consent_pb2.ConsentPurpose


def test_each_kind_maps_to_its_purpose() -> None:
    assert domain.purpose_of_kind(K.SIGNAL_KIND_STEPS) == P.CONSENT_PURPOSE_FITNESS_DATA_FOR_TIPS
    assert domain.purpose_of_kind(K.SIGNAL_KIND_WORKOUT) == P.CONSENT_PURPOSE_FITNESS_DATA_FOR_TIPS
    assert domain.purpose_of_kind(K.SIGNAL_KIND_SLEEP) == P.CONSENT_PURPOSE_SLEEP_DATA_FOR_TIPS
    assert (
        domain.purpose_of_kind(K.SIGNAL_KIND_CALENDAR_EVENT)
        == P.CONSENT_PURPOSE_CALENDAR_DATA_FOR_TIPS
    )
    assert domain.purpose_of_kind(K.SIGNAL_KIND_MOOD) == P.CONSENT_PURPOSE_MOOD_DATA_FOR_TIPS


def test_the_apps_own_data_needs_no_consent() -> None:
    assert domain.purpose_of_kind(K.SIGNAL_KIND_FOCUS_SESSION) is None
    assert domain.purpose_of_kind(K.SIGNAL_KIND_TIP_REACTION) is None


def test_every_payload_kind_is_decided() -> None:
    # A new kind must be added to the mapping or deliberately left consent-free.
    free = {K.SIGNAL_KIND_FOCUS_SESSION, K.SIGNAL_KIND_TIP_REACTION}
    assert set(domain.PAYLOAD_OF_KIND) == set(domain.PURPOSE_OF_KIND) | free


def test_consent_ids_match_the_profile_resource_ids() -> None:
    assert consent_id(P.CONSENT_PURPOSE_FITNESS_DATA_FOR_TIPS) == "fitness-data-for-tips"
    assert consent_id(P.CONSENT_PURPOSE_CALENDAR_DATA_FOR_TIPS) == "calendar-data-for-tips"
    for purpose in ALL_PURPOSES:
        assert purpose_of(consent_id(purpose)) == purpose
    assert purpose_of("no-such-consent") is None

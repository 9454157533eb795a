"""Tips end to end over REST through the gateway, in the mesh `tips up` starts (issue 6).

A user signs in (a local OIDC issuer as Google), sets a time zone, posts
signals, is offered only consent-free tips, grants consents, gets tips whose
explanations quote their signals, and reacts; the policy learns from the
reactions and later decisions change with them.

Ids and numbers that are not on the REST surface are read for the checks
only: the decision log's candidates (``recommender.tips.candidates``: every
eligible catalog tip's score and probability) and the recommender's internal
gRPC service (decision context, policy status). The user's local time is made
early afternoon with an ``Etc/GMT`` zone, so which catalog tips fit the day
part does not depend on when the test runs.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest

from services.recommender.explain import clock
from tests.e2e import identity_support as idp
from tests.e2e.identity_support import Issuers, eventually, user_id
from tests.e2e.meshutil import ROOT, RunningMesh
from tips.recommender.v1 import recommender_service_pb2 as rec
from tips.recommender.v1 import recommender_service_pb2_grpc as rec_grpc
from tipsmesh.clock import afternoon_zone

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CATALOG = json.loads((ROOT / "policy/data/tips.v1.json").read_text())["tips"]
NEEDS: dict[str, dict[str, Any]] = {t["id"]: t for t in CATALOG}
DATA_CONSENTS = (
    "fitness-data-for-tips",
    "calendar-data-for-tips",
    "sleep-data-for-tips",
    "mood-data-for-tips",
)
STEPS, SLEEP_MINUTES, MOOD = 4321, 312, 2
# How each signal reads in an explanation (explain.py's formats).
STEPS_TEXT, SLEEP_TEXT, MOOD_TEXT = "4,321", "5 h 12 min", "2/5"
SIGNALS_SEEN = 4


@dataclass
class Stage:
    issuers: Issuers
    mesh: RunningMesh
    zone: str
    meeting: datetime  # start of the busy calendar event every user posts

    def http(self, token: str) -> httpx.Client:
        return idp.rest_client(self.mesh, token)

    def internal(self) -> rec_grpc.RecommenderInternalServiceStub:
        return rec_grpc.RecommenderInternalServiceStub(self.mesh.channel("recommender"))


@pytest.fixture(scope="module")
def stage() -> Iterator[Stage]:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    # Fixed exploration seed: the same draws for the same candidates, run after run.
    with (
        idp.oidc_issuers() as issuers,
        idp.identity_mesh(issuers, "tips-e2e-", {"TIPS_RECOMMENDER_SEED": "7"}) as mesh,
    ):
        yield Stage(issuers, mesh, afternoon_zone(now), now + timedelta(minutes=100))


# --- helpers ------------------------------------------------------------------------------


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def signals(stage: Stage) -> list[dict[str, Any]]:
    """Steps today, last night's sleep, a mood check-in, a meeting later today."""
    now = datetime.now(UTC).replace(microsecond=0)
    midnight = now.replace(hour=0, minute=0, second=0)
    steps_start = max(midnight, now - timedelta(minutes=20))  # today's UTC day

    def signal(kind: str, start: datetime, end: datetime, **payload: Any) -> dict[str, Any]:
        return {
            "clientSignalId": f"{kind.lower()}-{uuid.uuid4().hex[:8]}",
            "kind": f"SIGNAL_KIND_{kind}",
            "source": "SIGNAL_SOURCE_PHONE",
            "startTime": _iso(start),
            "endTime": _iso(end),
            **payload,
        }

    meeting = stage.meeting
    return [
        signal("STEPS", steps_start, min(steps_start + timedelta(minutes=10), now),
               steps={"count": str(STEPS)}),
        signal("SLEEP", now - timedelta(hours=13), now - timedelta(hours=5),
               sleep={"asleepMinutes": SLEEP_MINUTES}),
        signal("MOOD", now - timedelta(minutes=1), now - timedelta(minutes=1),
               mood={"score": MOOD}),
        signal("CALENDAR_EVENT", meeting, meeting + timedelta(minutes=30),
               calendarEvent={"eventId": f"ev-{uuid.uuid4().hex[:6]}", "busy": True,
                              "attendeeCount": 4}),
    ]  # fmt: skip


def grant(http: httpx.Client, consent: str) -> None:
    granted = http.post(
        f"/v1/users/me/consents/{consent}:grant",
        json={"textVersion": "2025-01-15", "source": "CONSENT_SOURCE_APP"},
    )
    assert granted.status_code == 200, granted.text
    assert granted.json()["state"] == "CONSENT_STATE_GRANTED", granted.json()


def new_user(stage: Stage, label: str, *, consents: bool) -> tuple[str, str]:
    """Signed in, time zone set, signals posted and folded; (access token, user id)."""
    signed = idp.sign_in(
        stage.mesh, stage.issuers, stage.issuers.google, f"{label}-{uuid.uuid4().hex[:10]}", label
    )
    token, user = signed["accessToken"], user_id(signed)
    with stage.http(token) as http:
        patched = http.patch(
            "/v1/users/me/profile",
            params={"updateMask": "timeZone,dailyTipCap"},
            json={"timeZone": stage.zone, "dailyTipCap": 50},
        )
        assert patched.status_code == 200, patched.text
        if consents:  # before the recommender first looks the user up
            for consent in DATA_CONSENTS:
                grant(http, consent)
        outcomes = post_signals(stage, http)
        if not consents:
            # Every posted kind needs a data consent: events stores none of them.
            assert outcomes == ["INGEST_OUTCOME_REJECTED"] * SIGNALS_SEEN, outcomes
            return token, user
        assert outcomes == ["INGEST_OUTCOME_ACCEPTED"] * SIGNALS_SEEN, outcomes
    wait_for_context(stage, user)
    return token, user


def post_signals(stage: Stage, http: httpx.Client) -> list[str]:
    """Posts ``signals(stage)``; the outcome of each."""
    posted = http.post("/v1/users/me/signals:batchIngest", json={"signals": signals(stage)})
    assert posted.status_code == 200, posted.text
    return [r["outcome"] for r in posted.json()["results"]]


def wait_for_context(stage: Stage, user: str) -> dict[str, float]:
    """The recommender's context of ``user`` once it has folded the signals (bounded)."""
    stub = stage.internal()

    def folded() -> dict[str, float] | None:
        got = stub.GetDecisionContext(
            rec.GetDecisionContextRequest(name=f"users/{user}/decisionContext"), timeout=5
        ).decision_context
        values = {f.name: f.value for f in got.features}
        return values if got.signal_count >= SIGNALS_SEEN else None

    values = eventually(f"the signals of {user} in the decision context", folded)
    assert values["steps_today"] == STEPS and values["sleep_minutes"] == SLEEP_MINUTES, values
    assert values["mood_score"] == MOOD and values["afternoon"] == 1.0, values
    assert 60 < values["free_minutes"] <= 100, values  # until the meeting
    return values


def list_tips(http: httpx.Client, page_size: int) -> list[dict[str, Any]]:
    """The active tips (a decision only when none is)."""
    listed = http.get("/v1/users/me/tips", params={"pageSize": page_size})
    assert listed.status_code == 200, listed.text
    return list(listed.json().get("tips", []))


def decide_tips(http: httpx.Client, page_size: int) -> list[dict[str, Any]]:
    """A new decision, whatever is active."""
    decided = http.post("/v1/users/me/tips:decide", json={"pageSize": page_size})
    assert decided.status_code == 200, decided.text
    return list(decided.json().get("tips", []))


def catalog_id(tip: dict[str, Any]) -> str:
    return str(tip["catalogTip"]).removeprefix("catalogTips/")


async def _candidates(database_url: str, user: str, tip_id: str) -> dict[str, list[float]]:
    conn = await asyncpg.connect(database_url)
    try:
        raw = await conn.fetchval(
            "SELECT candidates FROM recommender.tips WHERE user_id = $1 AND tip_id = $2",
            user,
            tip_id,
        )
    finally:
        await conn.close()
    assert raw is not None, (user, tip_id)
    return dict(json.loads(raw))


def candidates(stage: Stage, tip: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """The logged decision of ``tip``: catalog id -> (score, probability) of each candidate."""
    _, user, _, tip_id = str(tip["name"]).split("/")
    got = asyncio.run(_candidates(stage.mesh.admin_database_url(), user, tip_id))
    return {arm: (float(s), float(p)) for arm, (s, p) in got.items()}


def gated(arm: str) -> bool:
    return bool(NEEDS[arm]["required_consents"])


def check_explanation(stage: Stage, tip: dict[str, Any]) -> bool:
    """Asserts the explanation is a rendered sentence that quotes the signals the tip
    needs; returns whether it quotes a number from the user's signals."""
    why = str(tip.get("explanation", ""))
    assert len(why) >= 20 and "{" not in why and why[0].isupper(), tip
    needs = set(NEEDS[catalog_id(tip)]["signals_needed"])
    quoted = {
        "steps": STEPS_TEXT in why,
        "sleep": SLEEP_TEXT in why,
        "mood": MOOD_TEXT in why,
        "calendar_event": (
            clock(stage.meeting.astimezone(ZoneInfo(stage.zone))) in why or "free minutes" in why
        ),
    }
    for kind in needs & {"steps", "sleep", "mood"}:
        assert quoted[kind], f"{catalog_id(tip)} needs {kind} but says: {why!r}"
    return any(quoted.values())


def policy_updates(stage: Stage) -> int:
    status = stage.internal().GetPolicyStatus(rec.GetPolicyStatusRequest(), timeout=5)
    return int(status.online_update_count)


def probe(stage: Stage, label: str) -> dict[str, tuple[float, float]]:
    """A fresh user set up like the others: the candidates of their first decision."""
    token, _ = new_user(stage, label, consents=True)
    with stage.http(token) as http:
        [tip] = list_tips(http, 1)
    return candidates(stage, tip)


# --- the flow ------------------------------------------------------------------------------


def test_sign_in_consent_signals_explained_tip_react_and_learn(stage: Stage) -> None:
    token, user = new_user(stage, "erin", consents=False)
    with stage.http(token) as http:
        # No consent yet: no decision even considers a tip that needs one.
        before = list_tips(http, 5)
        assert before, "no tip offered without consents"
        for tip in before:
            assert tip["name"].startswith(f"users/{user}/tips/")
            assert not gated(catalog_id(tip)), tip
            considered = candidates(stage, tip)
            assert considered and not [a for a in considered if gated(a)], considered

        for consent in DATA_CONSENTS:
            grant(http, consent)
        # Granted: events stores the same kinds at once (it confirms with profile).
        assert post_signals(stage, http) == ["INGEST_OUTCOME_ACCEPTED"] * SIGNALS_SEEN
        wait_for_context(stage, user)

        # The grant reaches the recommender (ConsentChanged): gated tips become candidates.
        def gated_considered() -> bool | None:
            [tip] = decide_tips(http, 1)
            return True if any(gated(a) for a in candidates(stage, tip)) else None

        eventually("consent-gated tips among the candidates", gated_considered)

        # Explained tips: every explanation quotes the signals its tip needs.
        def explained() -> list[dict[str, Any]] | None:
            tips = decide_tips(http, 5)
            assert len(tips) == 5, tips
            quotes = [check_explanation(stage, t) for t in tips]
            return tips if any(quotes) else None

        shown = eventually("a tip explained with the user's own numbers", explained, timeout=30)
        assert len({catalog_id(t) for t in shown}) == 5
        for tip in shown:
            assert tip["state"] == "TIP_STATE_ACTIVE" and tip["title"] and tip["body"], tip

    # What a new user in the same situation would be offered, before any reaction.
    baseline = probe(stage, "before")
    arms = [catalog_id(t) for t in shown]
    assert all(a in baseline for a in arms), (arms, sorted(baseline))
    # Done for the tip the policy liked least of the five (among those within reach of
    # the best: an exploration pick may score far below); snooze one, dismiss the rest.
    top = max(baseline[a][0] for a in arms)
    done = min(
        (t for t in shown if baseline[catalog_id(t)][0] >= top - 0.1),
        key=lambda t: baseline[catalog_id(t)][0],
    )
    snoozed, *dismissed = [t for t in shown if t is not done]
    reactions = [(done, "TIP_REACTION_DONE", "TIP_STATE_DONE"),
                 (snoozed, "TIP_REACTION_SNOOZE", "TIP_STATE_SNOOZED")]  # fmt: skip
    reactions += [(t, "TIP_REACTION_DISMISS", "TIP_STATE_DISMISSED") for t in dismissed]
    updates = policy_updates(stage)
    with stage.http(token) as http:
        for tip, reaction, state in reactions:
            body = {"reaction": reaction, "requestId": str(uuid.uuid4())}
            reacted = http.post(f"/v1/{tip['name']}:react", json=body)
            assert reacted.status_code == 200, reacted.text
            assert (reacted.json()["reaction"], reacted.json()["state"]) == (reaction, state)

    # The rewards come back over the events stream and are folded into the policy.
    eventually(
        "the policy to learn the five rewards",
        lambda: True if policy_updates(stage) >= updates + len(reactions) else None,
    )

    # Decisions take the shared part from the exported model, and the joint fit gives
    # most of a reward to it (docs/policy.md, "The joint fit"): export now, as the
    # refresh rule does after 200 rewards, so the probe sees all the five taught.
    stage.internal().ExportPolicyModel(
        rec.ExportPolicyModelRequest(request_id=str(uuid.uuid4())), timeout=30
    )

    # Later decisions change: for a new user in the same situation the tip done is
    # now worth more, against the tips nobody reacted to, and outranks the dismissed.
    after = probe(stage, "after")
    unreacted = [a for a in baseline if a in after and a not in arms]
    assert len(unreacted) >= 10, unreacted
    drift = statistics.median(after[a][0] - baseline[a][0] for a in unreacted)
    d = catalog_id(done)
    gain = after[d][0] - baseline[d][0] - drift
    report = {
        "done": d,
        "gain": round(gain, 4),
        "drift": round(drift, 5),
        "score": (round(baseline[d][0], 4), round(after[d][0], 4)),
        "p": (round(baseline[d][1], 4), round(after[d][1], 4)),
        "dismissed": {
            catalog_id(t): (round(baseline[catalog_id(t)][0], 4), round(after[catalog_id(t)][0], 4))
            for t in dismissed
        },
    }
    print("learning:", report)
    assert gain >= 0.1, report
    assert after[d][1] > 3 * baseline[d][1] or after[d][1] > 0.5, report
    for tip in dismissed:
        a = catalog_id(tip)
        assert after[a][0] - baseline[a][0] - drift < 0.05, report  # a dismissal gains nothing
        assert after[a][0] < after[d][0], report  # ranked below the done tip now (if not before)

    # The user's own history has the reactions; reacted tips are not offered again soon.
    with stage.http(token) as http:
        history = http.get("/v1/users/me/tips:history", params={"pageSize": 100})
        assert history.status_code == 200, history.text
        states = {t["name"]: t["state"] for t in history.json()["tips"]}
        assert {t["name"]: s for t, _, s in reactions} == {
            t["name"]: states.get(t["name"]) for t, _, _ in reactions
        }
        again = decide_tips(http, 5)
        assert again, "no tip offered after the reactions"
        assert not {catalog_id(t) for t in again} & set(arms), again


def test_reaction_to_another_users_tip_is_refused(stage: Stage) -> None:
    token, _ = new_user(stage, "owner", consents=True)
    other, _ = new_user(stage, "other", consents=True)
    with stage.http(token) as http:
        [tip] = list_tips(http, 1)
    with stage.http(other) as http:
        refused = http.post(f"/v1/{tip['name']}:react", json={"reaction": "TIP_REACTION_DONE"})
        assert refused.status_code in (403, 404), refused.text
    with stage.http(token) as http:
        mine = http.get(f"/v1/{tip['name']}")
        assert mine.status_code == 200 and mine.json()["state"] == "TIP_STATE_ACTIVE", mine.text

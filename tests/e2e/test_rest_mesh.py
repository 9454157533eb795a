"""The product's REST surface through the gateway, in the mesh `tips up` starts.

Driven as a mobile app would: JSON over HTTP with a bearer token. The tokens
are signed by the test with a key whose JWK Set it serves (TIPS_JWKS_URL), so
this module does not depend on the auth service's sign-in.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey
from openapi_spec_validator import validate

from tests.e2e.meshutil import RunningMesh, start_mesh, stop_and_check
from tipsmesh.clock import afternoon_zone
from tipsmesh.devtokens import JwksServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ISSUER = "https://auth.e2e.test"
AUDIENCE = "tips-e2e"


@pytest.fixture(scope="module")
def signing_key() -> Iterator[tuple[ECKey, JwksServer]]:
    key = ECKey.generate_key("P-256", parameters={"kid": "e2e-1"})
    server = JwksServer()
    server.publish(key)
    try:
        yield key, server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory, signing_key: tuple[ECKey, JwksServer]
) -> Iterator[RunningMesh]:
    _, jwks = signing_key
    env = {"TIPS_JWKS_URL": jwks.url, "TIPS_AUTH_ISSUER": ISSUER, "TIPS_AUTH_AUDIENCE": AUDIENCE}
    running = start_mesh(tmp_path_factory.mktemp("rest"), extra_env=env)
    yield running
    import signal

    if running.proc.poll() is None:
        assert stop_and_check(running, signal.SIGTERM) == 0


def token(key: ECKey, user: str, scopes: str = "") -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER, "aud": AUDIENCE, "sub": user, "iat": now, "exp": now + 600,
        "jti": uuid.uuid4().hex, "scope": scopes, "sid": f"s_{user}",
    }  # fmt: skip
    return jwt.encode({"alg": "ES256", "kid": key.kid}, claims, key)


@pytest.fixture
def user() -> str:
    return f"u{uuid.uuid4().hex[:12]}"


def client(mesh: RunningMesh, key: ECKey | None = None, user: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token(key, user)}"} if key and user else {}
    return httpx.Client(
        base_url=f"http://127.0.0.1:{mesh.port('gateway')}",
        headers=headers,
        timeout=10,
        trust_env=False,
    )


def steps(client_id: str, count: int) -> dict[str, Any]:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    return {
        "clientSignalId": client_id,
        "kind": "SIGNAL_KIND_STEPS",
        "source": "SIGNAL_SOURCE_PHONE",
        "startTime": start.isoformat().replace("+00:00", "Z"),
        "endTime": (start + timedelta(minutes=30)).isoformat().replace("+00:00", "Z"),
        "steps": {"count": str(count)},
    }


def wait_for_tip(http: httpx.Client, needle: str) -> dict[str, Any]:
    """DecideTips until a decided tip's explanation quotes the signal.

    Each call is a new decision by an exploring policy (ListTips would show
    the first decision's tips again), so the test asks for a few tips per call
    and polls (bounded) until one explains itself with the number the signal
    carried: proof the choice used that signal.
    """
    deadline = time.monotonic() + 30
    while True:
        response = http.post("/v1/users/me/tips:decide", json={"pageSize": 5})
        assert response.status_code == 200, response.text
        tips = response.json()["tips"]
        for tip in tips:
            if needle in tip["explanation"]:
                return dict(tip)
        assert time.monotonic() < deadline, f"no tip mentioning {needle!r}: {tips}"
        time.sleep(0.2)


def test_thin_path_over_rest(mesh: RunningMesh, signing_key: tuple[ECKey, Any], user: str) -> None:
    key, _ = signing_key
    with client(mesh, key, user) as http:
        # Step tips fit the daytime: the user's zone makes it mid-afternoon now.
        zoned = http.patch(
            "/v1/users/me/profile",
            params={"updateMask": "timeZone"},
            json={"timeZone": afternoon_zone()},
        )
        assert zoned.status_code == 200, zoned.text
        # Step-based tips need the user's consent to use fitness data.
        granted = http.post(
            "/v1/users/me/consents/fitness-data-for-tips:grant",
            json={"textVersion": "2025-01-15", "source": "CONSENT_SOURCE_APP"},
        )
        assert granted.status_code == 200, granted.text
        bad = {**steps("bad-1", 1), "steps": {"count": "-5"}}
        posted = http.post(
            "/v1/users/me/signals:batchIngest", json={"signals": [steps("s-1", 900), bad]}
        )
        assert posted.status_code == 200, posted.text
        results = posted.json()["results"]
        assert [r["outcome"] for r in results] == [
            "INGEST_OUTCOME_ACCEPTED",
            "INGEST_OUTCOME_REJECTED",
        ]
        assert results[0]["signal"].startswith(f"users/{user}/signals/")
        details = results[1]["error"]["details"]
        fields = [v["field"] for d in details for v in d.get("fieldViolations", [])]
        assert fields == ["steps.count"], details

        tip = wait_for_tip(http, "900 steps")
        assert tip["name"].startswith(f"users/{user}/tips/")

        reacted = http.post(f"/v1/{tip['name']}:react", json={"reaction": "TIP_REACTION_DONE"})
        assert reacted.status_code == 200, reacted.text
        assert reacted.json()["state"] == "TIP_STATE_DONE"

        deadline = time.monotonic() + 20
        while True:
            history = http.get("/v1/users/me/tips:history").json()["tips"]
            states = {t["name"]: t["state"] for t in history}
            if states.get(tip["name"]) == "TIP_STATE_DONE":
                break
            assert time.monotonic() < deadline, history
            time.sleep(0.2)


def test_another_users_resources_are_refused(
    mesh: RunningMesh, signing_key: tuple[ECKey, Any], user: str
) -> None:
    key, _ = signing_key
    with client(mesh, key, user) as http:
        assert http.get("/v1/users/someone-else/tips").status_code == 403
        refused = http.post(
            "/v1/users/someone-else/signals:batchIngest", json={"signals": [steps("x", 10)]}
        )
        assert refused.status_code == 403
        assert refused.json()["code"] == 7


def test_a_request_without_a_token_is_401_with_www_authenticate(mesh: RunningMesh) -> None:
    with client(mesh) as http:
        response = http.get("/v1/users/me/tips")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["code"] == 16


def test_a_client_mistake_is_a_400_naming_the_field(
    mesh: RunningMesh, signing_key: tuple[ECKey, Any], user: str
) -> None:
    key, _ = signing_key
    with client(mesh, key, user) as http:
        response = http.get("/v1/users/me/tips", params={"pageSize": "many"})
    assert response.status_code == 400
    details = response.json()["details"]
    fields = [v["field"] for d in details for v in d.get("fieldViolations", [])]
    assert fields == ["page_size"] or fields == ["pageSize"], details


def test_home_screen_is_partial_when_a_part_is_missing(
    mesh: RunningMesh, signing_key: tuple[ECKey, Any], user: str
) -> None:
    key, _ = signing_key
    with client(mesh, key, user) as http:
        response = http.get("/v1/users/me/home")
    assert response.status_code == 200, response.text
    screen = response.json()
    assert screen["name"] == f"users/{user}/home"
    assert len(screen["tips"]) == 1
    # Whatever is not built yet, or down, is named rather than failing the screen.
    for part in screen["missingParts"]:
        assert part["part"] in {"profile", "connections"}
        assert part["status"]["code"] != 0


def test_openapi_is_valid_3_1_and_docs_are_served(mesh: RunningMesh, tmp_path: Path) -> None:
    with client(mesh) as http:
        spec = http.get("/openapi.json")
        docs = http.get("/docs")
    assert spec.status_code == 200
    document = spec.json()
    assert document["openapi"].startswith("3.1")
    validate(document)
    assert "/v1/users/{usersId}/signals:batchIngest" in document["paths"]
    assert docs.status_code == 200 and "BatchIngestSignals" in docs.text


def test_schemathesis_finds_no_server_error(
    mesh: RunningMesh, signing_key: tuple[ECKey, Any], user: str, tmp_path: Path
) -> None:
    """A bounded property-based run of every documented operation: no 5xx at all."""
    import subprocess
    import sys
    import xml.etree.ElementTree as ET

    key, _ = signing_key
    base = f"http://127.0.0.1:{mesh.port('gateway')}"
    st = Path(sys.executable).parent / "st"
    result = subprocess.run(
        [
            str(st), "run", f"{base}/openapi.json", "--url", base,
            "--checks", "not_a_server_error",
            "--max-examples", "5", "--request-timeout", "10",
            "--generation-deterministic", "--phases", "examples,coverage,fuzzing",
            "-H", f"Authorization: Bearer {token(key, user, 'admin')}",
            "--report", "junit", "--report-dir", str(tmp_path),
        ],
        capture_output=True, text=True, timeout=200, check=False,
    )  # fmt: skip
    [report] = list(tmp_path.glob("junit*.xml"))
    cases = list(ET.parse(report).iter("testcase"))
    server_errors = [
        f"{case.get('name')}: {(failure.text or failure.get('message') or '')[:400]}"
        for case in cases
        for failure in case.findall("failure") + case.findall("error")
    ]
    print(f"schemathesis: {len(cases)} operations tested")
    assert len(cases) >= 60, result.stdout[-3000:]
    assert not server_errors, "\n".join(server_errors)

"""The FCM service-account assertion (RFC 7523) signed by joserfc, against the
Google token-endpoint stand-in, which verifies it with ``cryptography`` on its own.

The stand-in must accept only assertions signed by the service account's
key: one signed by another key, or altered after signing, is refused, so the
delivery tests that go through it prove the signature, not just the shape.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwt
from joserfc.jwk import RSAKey

from kernel.settings import Settings
from services.notifier.fcm import JWT_BEARER, SCOPE, FcmConfigError, ServiceAccountTokens
from services.notifier.settings import NotifierSettings
from tests.support.push_standins import CLIENT_EMAIL, KEY_ID, FcmStandIn, serve_fcm

pytestmark = pytest.mark.integration


@pytest.fixture
async def standin() -> AsyncIterator[FcmStandIn]:
    fcm = FcmStandIn()
    async with serve_fcm(fcm):
        yield fcm


def _settings(credentials: str) -> NotifierSettings:
    return NotifierSettings(**Settings().model_dump(), notifier_fcm_credentials=credentials)


def _segment(token: str, index: int) -> dict[str, Any]:
    part = token.split(".")[index]
    found: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return found


async def _exchange(fcm: FcmStandIn, assertion: str) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(
            f"{fcm.base_url}/token", data={"grant_type": JWT_BEARER, "assertion": assertion}
        )


def _signed(key: rsa.RSAPrivateKey, claims: dict[str, Any], kid: str = KEY_ID) -> str:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return jwt.encode({"alg": "RS256", "kid": kid}, claims, RSAKey.import_key(pem))


def _claims(fcm: FcmStandIn) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": CLIENT_EMAIL,
        "scope": SCOPE,
        "aud": f"{fcm.base_url}/token",
        "iat": now,
        "exp": now + 3600,
    }


async def test_assertion_is_rs256_with_the_documented_claims(standin: FcmStandIn) -> None:
    async with httpx.AsyncClient() as http:
        tokens = ServiceAccountTokens(_settings(standin.credentials()), http)
        assertion = tokens._assertion(time.time())
        access = await tokens.token()
        assert await tokens.token() == access  # cached, not exchanged again
    assert access in standin.issued and len(standin.assertions) == 1
    header, claims = _segment(assertion, 0), _segment(assertion, 1)
    assert header == {"alg": "RS256", "typ": "JWT", "kid": KEY_ID}
    assert claims["iss"] == CLIENT_EMAIL and claims["scope"] == SCOPE
    assert claims["aud"] == f"{standin.base_url}/token"
    assert claims["exp"] - claims["iat"] == 3600 and abs(claims["iat"] - time.time()) < 60
    # The public half verifies it (joserfc here; the stand-in uses cryptography).
    public = RSAKey.import_key(
        standin.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert jwt.decode(assertion, public, algorithms=["RS256"]).claims == claims


async def test_standin_refuses_a_wrong_signature(standin: FcmStandIn) -> None:
    good = _signed(standin.key, _claims(standin))
    assert (await _exchange(standin, good)).status_code == 200
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = await _exchange(standin, _signed(other, _claims(standin)))
    assert forged.status_code == 400 and forged.json() == {"error": "invalid_grant"}
    # A valid signature over other claims: swap the payload after signing.
    head, _, signature = good.split(".")
    widened = {**_claims(standin), "scope": "https://www.googleapis.com/auth/cloud-platform"}
    payload = base64.urlsafe_b64encode(json.dumps(widened).encode()).rstrip(b"=").decode()
    assert (await _exchange(standin, f"{head}.{payload}.{signature}")).status_code == 400
    # Right key, unknown key id; and an unsigned token.
    assert (await _exchange(standin, _signed(standin.key, _claims(standin), "k2"))).status_code == (
        400
    )
    unsigned = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    assert (await _exchange(standin, f"{unsigned}.{payload}.")).status_code == 400
    assert len(standin.assertions) == 1  # only the good one was accepted


async def test_a_key_the_endpoint_does_not_know_gets_no_token(standin: FcmStandIn) -> None:
    impostor = FcmStandIn(base_url=standin.base_url)  # another key, same account and URL
    async with httpx.AsyncClient() as http:
        tokens = ServiceAccountTokens(_settings(impostor.credentials()), http)
        with pytest.raises(httpx.HTTPStatusError):
            await tokens.token()
    assert standin.issued == []


def test_unusable_keys_are_refused_naming_the_setting() -> None:
    good = json.loads(FcmStandIn().credentials())
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    public_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    for bad in (
        "not json",
        json.dumps({**good, "private_key": ec_pem}),
        json.dumps({**good, "private_key": public_pem}),
        json.dumps({**good, "private_key": "-----BEGIN PRIVATE KEY-----\nxx\n"}),
        json.dumps({k: v for k, v in good.items() if k != "client_email"}),
    ):
        with pytest.raises(FcmConfigError) as refused:
            ServiceAccountTokens(_settings(bad), httpx.AsyncClient())
        assert "TIPS_NOTIFIER_FCM_CREDENTIALS" in str(refused.value)
        assert "PRIVATE KEY" not in str(refused.value)

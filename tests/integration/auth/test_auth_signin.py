"""Sign-in with Google and Apple ID tokens: the happy paths and every attack.

The ID tokens come from local OIDC issuers over real HTTP; the auth service
runs in process against real PostgreSQL and NATS.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import uuid
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from kernel.errors import error_info, status_details, unpack_details
from tests.support.auth_mesh import APPLE, FAILURE_LIMIT, GOOGLE, AuthMesh, auth
from tips.auth.v1 import auth_service_pb2 as pb
from tips.auth.v1 import session_pb2

pytestmark = pytest.mark.integration
__all__ = ["auth"]


def _request(provider: int, token: str, raw_nonce: str) -> pb.SignInRequest:
    return pb.SignInRequest(provider=provider, id_token=token, nonce=raw_nonce, platform=1)


async def _rejected(auth: AuthMesh, token: str, raw_nonce: str, provider: int = GOOGLE) -> str:
    """Sign in with ``token``; assert UNAUTHENTICATED; return the failed check."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.stub.SignIn(
            _request(provider, token, raw_nonce), metadata=auth.client(), timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, caught.value.details()
    info = error_info(caught.value)
    assert info is not None and info.reason == "ID_TOKEN_INVALID"
    # The token never comes back in the error.
    assert token not in (caught.value.details() or "")
    return info.metadata["check"]


async def _user_count(auth: AuthMesh) -> int:
    return int(await auth.db.fetchval("SELECT count(*) FROM auth.users"))


# --- happy paths ------------------------------------------------------------------


async def test_google_sign_in_creates_the_user_then_finds_it(auth: AuthMesh) -> None:
    subject = uuid.uuid4().hex
    first = await auth.sign_in(auth.google, subject, email="ana@example.com")
    assert first.user_created and first.user.startswith("users/u_")
    assert first.access_token.count(".") == 2
    assert first.refresh_token.startswith("tipsrt_")
    assert first.session.state == session_pb2.SESSION_STATE_ACTIVE
    assert first.session.device_name == "Test phone"
    second = await auth.sign_in(auth.google, subject, email="ana@example.com")
    assert not second.user_created
    assert second.user == first.user
    assert second.session.name != first.session.name
    # Sign-up published UserSignedUp through the outbox, once.
    rows = await auth.db.fetch(
        "SELECT message_type FROM auth.outbox WHERE message_type = 'tips.auth.v1.UserSignedUp'"
        " AND position($1 in encode(payload, 'escape')) > 0",
        first.user,
    )
    assert len(rows) == 1


async def test_apple_sign_in_hashes_the_raw_nonce(auth: AuthMesh) -> None:
    result = await auth.sign_in(
        auth.apple, email="x@privaterelay.appleid.com", email_verified="true"
    )
    assert result.user_created
    assert result.session.provider == APPLE


async def test_the_same_subject_at_two_providers_is_two_users(auth: AuthMesh) -> None:
    # Never linked automatically, even with the same subject and email.
    subject = uuid.uuid4().hex
    google = await auth.sign_in(auth.google, subject, email="same@example.com")
    apple = await auth.sign_in(auth.apple, subject, email="same@example.com")
    assert google.user != apple.user


async def test_link_identity_needs_the_signed_in_user(auth: AuthMesh) -> None:
    ana = await auth.sign_in(auth.google)
    raw = secrets.token_urlsafe(12)
    apple_subject = uuid.uuid4().hex
    token = auth.apple.mint(apple_subject, nonce=hashlib.sha256(raw.encode()).hexdigest())
    linked = await auth.stub.LinkIdentity(
        pb.LinkIdentityRequest(parent=ana.user, provider=APPLE, id_token=token, nonce=raw),
        metadata=auth.as_user(ana.user) + auth.client(),
        timeout=10,
    )
    assert linked.identity.name.startswith(ana.user + "/identities/")
    # Signing in with the linked Apple account now reaches the same user.
    again = await auth.sign_in(auth.apple, apple_subject)
    assert again.user == ana.user and not again.user_created
    listed = await auth.stub.ListIdentities(
        pb.ListIdentitiesRequest(parent="users/me"), metadata=auth.as_user(ana.user), timeout=10
    )
    assert len(listed.identities) == 2
    # Another user cannot link (or read) into Ana's account.
    bob = await auth.sign_in(auth.google)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.stub.ListIdentities(
            pb.ListIdentitiesRequest(parent=ana.user), metadata=auth.as_user(bob.user), timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


# --- attacks --------------------------------------------------------------------------


async def test_alg_none_is_rejected(auth: AuthMesh) -> None:
    raw = secrets.token_urlsafe(12)
    claims = auth.google.claims(uuid.uuid4().hex, raw)
    token = auth.google.forge({"alg": "none", "kid": auth.google.keys[0].kid}, claims, b"")
    assert await _rejected(auth, token, raw) == "alg"


async def test_hs256_signed_with_the_public_key_is_rejected(auth: AuthMesh) -> None:
    raw = secrets.token_urlsafe(12)
    token = auth.google.forge_hs256_with_public_key(auth.google.claims(uuid.uuid4().hex, raw))
    assert await _rejected(auth, token, raw) == "alg"


async def test_expired_token_is_rejected(auth: AuthMesh) -> None:
    raw = secrets.token_urlsafe(12)
    token = auth.google.mint(uuid.uuid4().hex, nonce=raw, exp_in=-120, iat_in=-900)
    assert await _rejected(auth, token, raw) == "exp"


async def test_not_yet_valid_token_is_rejected(auth: AuthMesh) -> None:
    raw = secrets.token_urlsafe(12)
    token = auth.google.mint(uuid.uuid4().hex, nonce=raw, iat_in=600, exp_in=1200)
    assert await _rejected(auth, token, raw) == "iat"
    raw = secrets.token_urlsafe(12)
    nbf = auth.google.mint(uuid.uuid4().hex, nonce=raw, extra={"nbf": int(time.time()) + 600})
    assert await _rejected(auth, nbf, raw) == "iat"


async def test_wrong_audience_is_rejected(auth: AuthMesh) -> None:
    raw = secrets.token_urlsafe(12)
    token = auth.google.mint(uuid.uuid4().hex, nonce=raw, aud="someone-elses-app")
    assert await _rejected(auth, token, raw) == "aud"
    # An Apple client id is not a Google one.
    raw = secrets.token_urlsafe(12)
    token = auth.google.mint(uuid.uuid4().hex, nonce=raw, aud="com.tips.app")
    assert await _rejected(auth, token, raw) == "aud"


async def test_wrong_issuer_is_rejected(auth: AuthMesh) -> None:
    raw = secrets.token_urlsafe(12)
    token = auth.google.mint(uuid.uuid4().hex, nonce=raw, iss="https://evil.example.com")
    assert await _rejected(auth, token, raw) == "iss"
    # A token of the Apple issuer presented as Google: Apple's keys are not Google's.
    raw = secrets.token_urlsafe(12)
    token = auth.apple.mint(uuid.uuid4().hex, nonce=raw, aud="google-ios")
    assert await _rejected(auth, token, raw) == "kid"


async def test_unknown_kid_is_rejected_and_refreshes_keys_at_most_once(auth: AuthMesh) -> None:
    from joserfc.jwk import RSAKey

    stranger = RSAKey.generate_key(2048, private=True)
    stranger.ensure_kid()
    raw = secrets.token_urlsafe(12)
    token = auth.google.mint(uuid.uuid4().hex, nonce=raw, key=stranger)
    await _rejected(auth, token, raw)  # may refresh once
    fetches = auth.google.jwks_fetches
    for _ in range(5):
        raw = secrets.token_urlsafe(12)
        token = auth.google.mint(uuid.uuid4().hex, nonce=raw, key=stranger)
        assert await _rejected(auth, token, raw) == "kid"
    # The refresh guard (0.5 s in tests) kept the flood from refetching each time.
    assert auth.google.jwks_fetches - fetches <= 2


async def test_a_rotated_provider_key_is_picked_up(auth: AuthMesh) -> None:
    auth.google.add_key()  # the provider rotates; our cache does not know the new kid
    await asyncio.sleep(0.6)  # past the refresh guard an earlier test may have used
    result = await auth.sign_in(auth.google)
    assert result.user_created


async def test_tampered_payload_is_rejected(auth: AuthMesh) -> None:
    raw = secrets.token_urlsafe(12)
    token = auth.google.mint("victim-" + uuid.uuid4().hex, nonce=raw)
    head, _, sig = token.split(".")
    claims = auth.google.claims("attacker", raw)
    import base64
    import json

    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert await _rejected(auth, f"{head}.{body}.{sig}", raw) == "signature"


async def test_wrong_or_replayed_nonce_is_rejected(auth: AuthMesh) -> None:
    raw = secrets.token_urlsafe(12)
    token = auth.google.mint(uuid.uuid4().hex, nonce=raw)
    assert await _rejected(auth, token, "another-nonce") == "nonce"
    await auth.stub.SignIn(_request(GOOGLE, token, raw), metadata=auth.client(), timeout=10)
    # The same token (and nonce) a second time: a replay.
    assert await _rejected(auth, token, raw) == "nonce"
    # Apple: the raw nonce itself in the token (not its hash) does not pass.
    raw = secrets.token_urlsafe(12)
    token = auth.apple.mint(uuid.uuid4().hex, nonce=raw)
    assert await _rejected(auth, token, raw, APPLE) == "nonce"


async def test_unverified_email_is_rejected(auth: AuthMesh) -> None:
    raw = secrets.token_urlsafe(12)
    token = auth.google.mint(uuid.uuid4().hex, nonce=raw, email="x@y.z", email_verified=False)
    assert await _rejected(auth, token, raw) == "email"


async def test_bad_requests_name_the_field(auth: AuthMesh) -> None:
    from kernel.errors import field_violations

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.stub.SignIn(pb.SignInRequest(provider=GOOGLE), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(caught.value)) == {"id_token", "nonce"}


async def test_too_many_failed_sign_ins_are_rate_limited(auth: AuthMesh) -> None:
    client = auth.client()
    raw = secrets.token_urlsafe(12)
    bad = auth.google.mint(uuid.uuid4().hex, nonce=raw, aud="nope")
    for _ in range(FAILURE_LIMIT):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await auth.stub.SignIn(_request(GOOGLE, bad, raw), metadata=client, timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    users = await _user_count(auth)
    # Now even a valid token from this client waits.
    raw = secrets.token_urlsafe(12)
    good = auth.google.mint(uuid.uuid4().hex, nonce=raw)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.stub.SignIn(_request(GOOGLE, good, raw), metadata=client, timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details: list[Any] = unpack_details(status_details(caught.value))
    retry = [d for d in details if isinstance(d, error_details_pb2.RetryInfo)]
    assert retry and 0 < retry[0].retry_delay.seconds <= 61
    assert await _user_count(auth) == users
    # Other clients are unaffected.
    await auth.stub.SignIn(_request(GOOGLE, good, raw), metadata=auth.client(), timeout=10)

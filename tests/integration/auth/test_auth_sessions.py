"""Sessions and tokens: refresh rotation and reuse, sign-out, the session list,
revocation, key rotation and the JWK Set, the web PKCE flow, and what is
stored at rest."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import httpx
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.json_format import MessageToDict
from joserfc import jwt
from joserfc.jwk import KeySet

from kernel.errors import error_info, field_violations
from services.auth.service import rotate_signing_keys
from tests.support.auth_mesh import APPLE, GOOGLE, REDIRECT_URI, AuthMesh, auth
from tips.auth.v1 import auth_service_pb2 as pb
from tips.auth.v1 import session_pb2
from tipsmesh.devidp import Login

pytestmark = pytest.mark.integration
__all__ = ["auth"]


async def _jwks(auth: AuthMesh) -> list[dict[str, Any]]:
    response = await auth.stub.GetJwks(pb.GetJwksRequest(), timeout=10)
    return [MessageToDict(k, preserving_proto_field_name=True) for k in response.keys]


async def _refresh(auth: AuthMesh, token: str) -> pb.RefreshSessionResponse:
    response: pb.RefreshSessionResponse = await auth.stub.RefreshSession(
        pb.RefreshSessionRequest(refresh_token=token), metadata=auth.client(), timeout=10
    )
    return response


async def _active(auth: AuthMesh, access_token: str) -> bool:
    response = await auth.internal.IntrospectToken(
        pb.IntrospectTokenRequest(access_token=access_token), timeout=10
    )
    return bool(response.active)


def _session_id(name: str) -> str:
    return name.rsplit("/", 1)[1]


async def test_access_token_claims_verify_with_the_jwks(auth: AuthMesh) -> None:
    signed = await auth.sign_in()
    keys = KeySet.import_key_set({"keys": await _jwks(auth)})  # type: ignore[arg-type]
    token = jwt.decode(signed.access_token, keys, algorithms=["ES256"])
    assert token.header["alg"] == "ES256" and token.header["kid"] == (await _jwks(auth))[0]["kid"]
    claims = token.claims
    assert claims["iss"] == auth.settings.auth_issuer
    assert claims["aud"] == auth.settings.auth_audience
    assert f"users/{claims['sub']}" == signed.user
    assert claims["sid"] == _session_id(signed.session.name)
    assert claims["scope"] == auth.settings.auth_default_scopes
    assert claims["exp"] - claims["iat"] == auth.settings.auth_access_token_ttl_seconds
    assert claims["jti"]
    assert await _active(auth, signed.access_token)


async def test_refresh_rotates_and_reuse_revokes_the_family(auth: AuthMesh) -> None:
    signed = await auth.sign_in()
    first = await _refresh(auth, signed.refresh_token)
    assert first.refresh_token != signed.refresh_token
    assert first.session.name == signed.session.name and first.user == signed.user
    second = await _refresh(auth, first.refresh_token)
    # The spent first token comes back: theft. The whole session ends.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _refresh(auth, signed.refresh_token)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    info = error_info(caught.value)
    assert info is not None and info.reason == "REFRESH_TOKEN_REUSED"
    # ...including the newest token of the family, and its access tokens.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _refresh(auth, second.refresh_token)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert not await _active(auth, second.access_token)
    got = await auth.stub.GetSession(
        pb.GetSessionRequest(name=signed.session.name), metadata=auth.as_user(signed.user)
    )
    assert got.session.state == session_pb2.SESSION_STATE_REVOKED
    assert got.session.revoke_reason == session_pb2.SESSION_REVOKE_REASON_REFRESH_TOKEN_REUSED
    revoked = await auth.db.fetchval(
        "SELECT count(*) FROM auth.outbox WHERE message_type = 'tips.auth.v1.SessionRevoked'"
        " AND position($1 in encode(payload, 'escape')) > 0",
        signed.session.name,
    )
    assert revoked == 1


async def test_garbage_refresh_tokens_are_rejected(auth: AuthMesh) -> None:
    for token in ("tipsrt_" + "A" * 43, "not-a-token"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _refresh(auth, token)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_list_get_and_revoke_sessions(auth: AuthMesh) -> None:
    subject = "multi-device"
    phone = await auth.sign_in(auth.google, subject)
    laptop = await auth.sign_in(auth.google, subject)
    user, md = phone.user, auth.as_user(phone.user, _session_id(phone.session.name))
    listed = await auth.stub.ListSessions(pb.ListSessionsRequest(parent="users/me"), metadata=md)
    names = [s.name for s in listed.sessions]
    assert names[:2] == [laptop.session.name, phone.session.name]  # newest first
    current = {s.name: s.current for s in listed.sessions}
    assert current[phone.session.name] and not current[laptop.session.name]
    assert all(s.device_name == "Test phone" and s.platform == 1 for s in listed.sessions)
    page = await auth.stub.ListSessions(
        pb.ListSessionsRequest(parent=user, page_size=1), metadata=md
    )
    assert len(page.sessions) == 1 and page.next_page_token
    # Another user can neither see nor revoke them.
    other = await auth.sign_in()
    for call in (
        auth.stub.ListSessions(
            pb.ListSessionsRequest(parent=user), metadata=auth.as_user(other.user)
        ),
        auth.stub.GetSession(
            pb.GetSessionRequest(name=laptop.session.name), metadata=auth.as_user(other.user)
        ),
        auth.stub.RevokeSession(
            pb.RevokeSessionRequest(name=laptop.session.name), metadata=auth.as_user(other.user)
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    revoked = await auth.stub.RevokeSession(
        pb.RevokeSessionRequest(name=laptop.session.name), metadata=md
    )
    assert revoked.session.state == session_pb2.SESSION_STATE_REVOKED
    assert revoked.session.revoke_reason == session_pb2.SESSION_REVOKE_REASON_USER_REVOKED
    with pytest.raises(grpc.aio.AioRpcError):
        await _refresh(auth, laptop.refresh_token)
    active = await auth.stub.ListSessions(pb.ListSessionsRequest(parent=user), metadata=md)
    assert laptop.session.name not in [s.name for s in active.sessions]
    everything = await auth.stub.ListSessions(
        pb.ListSessionsRequest(parent=user, show_inactive=True), metadata=md
    )
    assert laptop.session.name in [s.name for s in everything.sessions]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.stub.GetSession(
            pb.GetSessionRequest(name=f"{user}/sessions/s_missing"), metadata=md
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_sign_out_revokes_and_is_idempotent(auth: AuthMesh) -> None:
    signed = await auth.sign_in()
    for _ in range(2):
        await auth.stub.SignOut(pb.SignOutRequest(refresh_token=signed.refresh_token), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError):
        await _refresh(auth, signed.refresh_token)
    assert not await _active(auth, signed.access_token)


async def test_revoke_user_sessions(auth: AuthMesh) -> None:
    subject = "to-be-erased"
    one = await auth.sign_in(auth.google, subject)
    await auth.sign_in(auth.google, subject)
    response = await auth.internal.RevokeUserSessions(
        pb.RevokeUserSessionsRequest(
            user=one.user, reason=session_pb2.SESSION_REVOKE_REASON_USER_DELETED
        )
    )
    assert response.revoked_session_count == 2
    again = await auth.internal.RevokeUserSessions(pb.RevokeUserSessionsRequest(user=one.user))
    assert again.revoked_session_count == 0


async def test_a_grace_period_out_of_durations_range_is_named(auth: AuthMesh) -> None:
    """protobuf's ToTimedelta overflowed on it (INTERNAL); now the field is named."""
    for bad in (Duration(seconds=10**15), Duration(seconds=-1, nanos=5)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await auth.internal.RotateSigningKeys(
                pb.RotateSigningKeysRequest(previous_key_grace_period=bad)
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert list(field_violations(caught.value)) == ["previous_key_grace_period"]


async def test_rotation_keeps_the_previous_key_until_its_tokens_expire(auth: AuthMesh) -> None:
    before = await auth.sign_in()
    old_kid = (await _jwks(auth))[0]["kid"]
    rotated = await auth.internal.RotateSigningKeys(
        pb.RotateSigningKeysRequest(previous_key_grace_period=Duration(seconds=1))
    )
    new_kid = rotated.signing_key.kid
    assert new_kid != old_kid
    kids = [k["kid"] for k in await _jwks(auth)]
    assert kids[0] == new_kid and old_kid in kids
    # A token signed by the old key still verifies; new tokens use the new key.
    assert await _active(auth, before.access_token)
    after = await auth.sign_in()
    assert (
        jwt.decode(
            after.access_token,
            KeySet.import_key_set({"keys": await _jwks(auth)}),  # type: ignore[arg-type]
            algorithms=["ES256"],
        ).header["kid"]
        == new_kid
    )
    # The grace asked for (1 s) was raised to the token lifetime and more.
    remove = await auth.db.fetchval(
        "SELECT extract(epoch from remove_time - retire_time) FROM auth.signing_keys WHERE kid=$1",
        old_kid,
    )
    assert float(remove) >= auth.settings.auth_access_token_ttl_seconds
    # Its private half is gone at once.
    assert await auth.db.fetchval(
        "SELECT private_key IS NULL FROM auth.signing_keys WHERE kid=$1", old_kid
    )
    # Once the grace period is over, the old key leaves the set and its tokens fail.
    await auth.db.execute(
        "UPDATE auth.signing_keys SET remove_time = now() - interval '1 second' WHERE kid=$1",
        old_kid,
    )
    # The CLI's rotation (another connection) also works and is picked up.
    newest = await rotate_signing_keys(auth.settings)
    await asyncio.sleep(auth.settings.auth_signing_key_reload_seconds + 0.1)
    assert newest not in (old_kid, new_kid)
    assert not await _active(auth, before.access_token)
    kids = [k["kid"] for k in await _jwks(auth)]
    assert old_kid not in kids
    assert newest in kids and new_kid in kids


async def test_web_sign_in_with_pkce(auth: AuthMesh) -> None:
    for issuer, provider in ((auth.google, GOOGLE), (auth.apple, APPLE)):
        issuer.next_login = Login(f"web-{provider}", email="web@example.com")
        started = await auth.stub.StartWebSignIn(
            pb.StartWebSignInRequest(provider=provider, device_name="Firefox"), timeout=10
        )
        url = urlsplit(started.authorization_uri)
        assert url.netloc == urlsplit(issuer.issuer).netloc
        query = parse_qs(url.query)
        assert query["code_challenge_method"] == ["S256"]
        assert query["state"] == [started.state]
        assert query["redirect_uri"] == [REDIRECT_URI]
        # The browser goes to the provider, which sends it back with a code: a
        # redirect (Google), or a form posted to the redirect URI (Apple's form_post).
        async with httpx.AsyncClient(follow_redirects=False) as browser:
            answer = await browser.get(started.authorization_uri)
        if provider == APPLE:
            assert query["response_mode"] == ["form_post"]
            assert answer.status_code == 200
            assert f'action="{REDIRECT_URI}"' in answer.text
            fields = re.findall(r'name="(\w+)" value="([^"]*)"', answer.text)
            back = {name: [value] for name, value in fields}
        else:
            assert answer.status_code == 302
            back = parse_qs(urlsplit(answer.headers["location"]).query)
        assert back["state"] == [started.state]
        done = await auth.stub.CompleteWebSignIn(
            pb.CompleteWebSignInRequest(code=back["code"][0], state=back["state"][0]),
            metadata=auth.client(),
            timeout=10,
        )
        assert done.user.startswith("users/u_") and done.redirect_uri == REDIRECT_URI
        assert done.session.platform == session_pb2.PLATFORM_WEB
        assert done.session.device_name == "Firefox" and done.session.provider == provider
        assert await _active(auth, done.access_token)
        # The state works once.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await auth.stub.CompleteWebSignIn(
                pb.CompleteWebSignInRequest(code=back["code"][0], state=back["state"][0]),
                metadata=auth.client(),
            )
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_web_sign_in_refusals(auth: AuthMesh) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.stub.StartWebSignIn(
            pb.StartWebSignInRequest(provider=GOOGLE, redirect_uri="https://evil.example/cb")
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    started = await auth.stub.StartWebSignIn(pb.StartWebSignInRequest(provider=GOOGLE))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.stub.CompleteWebSignIn(
            pb.CompleteWebSignInRequest(state=started.state, error="access_denied"),
            metadata=auth.client(),
        )
    info = error_info(caught.value)
    assert info is not None and info.reason == "WEB_SIGN_IN_DECLINED"
    # A code obtained without our verifier (wrong PKCE) is refused by the provider.
    started = await auth.stub.StartWebSignIn(pb.StartWebSignInRequest(provider=GOOGLE))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.stub.CompleteWebSignIn(
            pb.CompleteWebSignInRequest(state=started.state, code="made-up"),
            metadata=auth.client(),
        )
    info = error_info(caught.value)
    assert info is not None and info.reason == "AUTHORIZATION_CODE_REJECTED"


async def test_nothing_secret_is_stored_in_plaintext(auth: AuthMesh) -> None:
    signed = await auth.sign_in()
    refreshed = await _refresh(auth, signed.refresh_token)
    auth.google.next_login = Login("dump-check")
    started = await auth.stub.StartWebSignIn(pb.StartWebSignInRequest(provider=GOOGLE))
    # A pending web sign-in: its verifier is at rest until the callback.
    async with httpx.AsyncClient(follow_redirects=False) as browser:
        await browser.get(started.authorization_uri)
    tables = [
        r["table_name"]
        for r in await auth.db.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'auth'"
        )
    ]
    dump = ""
    for table in tables:
        for row in await auth.db.fetch(f'SELECT t::text AS line FROM auth."{table}" t'):
            dump += row["line"] + "\n"
    secrets_at_rest = [
        signed.refresh_token,
        refreshed.refresh_token,
        signed.refresh_token.removeprefix("tipsrt_"),
        started.state,
        "PRIVATE KEY",
        # A hex dump (bytea) of the PEM header would show this.
        b"BEGIN".hex(),
    ]
    # The private scalar `d` of the current signing key, as stored would show it.
    for found in secrets_at_rest:
        assert found not in dump, f"found a secret in the auth schema: {found[:12]}..."
    public = json.dumps(await _jwks(auth))
    assert '"d"' not in public
    # The PKCE verifier the provider will see is not at rest either.
    done_state = parse_qs(urlsplit(started.authorization_uri).query)["state"][0]
    assert done_state not in dump


async def test_no_token_reaches_the_logs(auth: AuthMesh, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    signed = await auth.sign_in()
    refreshed = await _refresh(auth, signed.refresh_token)
    with pytest.raises(grpc.aio.AioRpcError):
        await _refresh(auth, signed.refresh_token)  # reuse: logged as a warning
    await auth.stub.SignOut(pb.SignOutRequest(refresh_token=refreshed.refresh_token))
    secrets_seen = [
        signed.access_token,
        signed.refresh_token,
        refreshed.refresh_token,
        refreshed.access_token,
    ]
    # Raw records, before the kernel's redaction: nothing to redact in the first place.
    for record in caplog.records:
        text = record.getMessage() + " " + " ".join(str(v) for v in vars(record).values())
        for secret in secrets_seen:
            assert secret not in text, f"a token reached the log via {record.name}"
    assert any(r.getMessage() == "refresh token reused; session revoked" for r in caplog.records)

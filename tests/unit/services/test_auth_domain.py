"""Pure pieces of the auth service: nonces, client addresses, envelopes, claim checks."""

from __future__ import annotations

import hashlib
import time

import httpx
import pytest

from kernel.errors import InvalidArgument, Unauthenticated
from kernel.settings import SettingsError
from services.auth import crypto, domain
from services.auth.providers import GOOGLE, Provider
from tips.auth.v1 import identity_pb2

pytestmark = pytest.mark.unit


def test_apple_nonce_is_the_sha256_hex_of_the_raw_nonce() -> None:
    raw = "r4w-n0nce"
    assert domain.expected_nonce(identity_pb2.IDENTITY_PROVIDER_GOOGLE, raw) == raw
    assert (
        domain.expected_nonce(identity_pb2.IDENTITY_PROVIDER_APPLE, raw)
        == hashlib.sha256(raw.encode()).hexdigest()
    )


def test_client_address_trusts_only_the_gateways_entry() -> None:
    # The gateway appends what it saw; what the client sent comes first.
    md = (("x-forwarded-for", "6.6.6.6, 198.51.100.7"),)
    assert domain.client_address(md, "ipv4:127.0.0.1:5000") == "198.51.100.7"
    assert domain.client_address((), "ipv4:127.0.0.1:5000") == "ipv4:127.0.0.1"
    assert domain.client_address((), "ipv6:[::1]:5000") == "ipv6:[::1]"


def test_envelope_round_trip_binds_the_row() -> None:
    envelope = crypto.Envelope(crypto.generate_kek(), "kek-1")
    sealed = envelope.seal(b"secret", b"row-1")
    assert b"secret" not in sealed.blob
    assert envelope.open(sealed, b"row-1") == b"secret"
    with pytest.raises(crypto.DecryptionError):
        envelope.open(sealed, b"row-2")
    with pytest.raises(crypto.DecryptionError):
        crypto.Envelope(crypto.generate_kek(), "kek-1").open(sealed, b"row-1")


def test_envelope_needs_a_32_byte_key() -> None:
    with pytest.raises(SettingsError, match="TIPS_AUTH_KEY_ENCRYPTION_KEY"):
        crypto.Envelope("", "kek-1")
    with pytest.raises(SettingsError, match="32 bytes"):
        crypto.Envelope(crypto.b64url(b"short"), "kek-1")


def test_refresh_tokens_and_pkce() -> None:
    token = crypto.new_refresh_token()
    assert token.startswith("tipsrt_") and crypto.looks_like_refresh_token(token)
    verifier = crypto.pkce_verifier()
    assert len(verifier) == 43  # RFC 7636: 43 to 128 characters
    # S256: BASE64URL(SHA256(ASCII(verifier))) without padding.
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    assert crypto.pkce_challenge(verifier) == crypto.b64url(digest)
    assert "=" not in crypto.pkce_challenge(verifier)


def test_bad_requests_name_fields() -> None:
    with pytest.raises(InvalidArgument) as caught:
        domain.check_sign_in_request(0, "", "")
    assert [f for f, _ in caught.value.violations] == ["provider", "id_token", "nonce"]
    with pytest.raises(InvalidArgument):
        domain.resolve_child("users/u1/tips/x", domain.SESSION)


def _provider() -> Provider:
    return Provider(
        GOOGLE,
        issuer="https://accounts.google.com",
        client_ids=["app"],
        web_client_id="",
        web_client_secret="",
        http=httpx.AsyncClient(),
        cache_seconds=60,
        min_refresh_seconds=1,
        leeway_seconds=30,
        max_age_seconds=3600,
    )


def _claims(**extra: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {
        "iss": "accounts.google.com",
        "aud": "app",
        "sub": "123",
        "iat": now,
        "exp": now + 60,
        "nonce": "n",
    }
    base.update(extra)
    return base


@pytest.mark.parametrize(
    ("extra", "check"),
    [
        ({"aud": ["app", "other"]}, "aud"),  # several audiences and no azp
        ({"exp": "soon"}, "exp"),
        # exp is far ahead: parameters are made at collection, the test may run minutes later.
        ({"iat": int(time.time()) - 7200, "exp": int(time.time()) + 86400}, "iat"),
        ({"sub": ""}, "sub"),
        ({"email": "a@b.c", "email_verified": "false"}, "email"),
    ],
)
def test_claim_checks(extra: dict[str, object], check: str) -> None:
    with pytest.raises(Unauthenticated) as caught:
        _provider().check_claims(_claims(**extra), "n", time.time())
    assert caught.value.metadata["check"] == check


def test_google_issuer_without_scheme_is_accepted() -> None:
    claims = _provider().check_claims(_claims(email="a@b.c", email_verified=True), "n", time.time())
    assert claims.subject == "123" and claims.email_verified


def test_a_local_identity_provider_is_refused_outside_dev_mode() -> None:
    from services.auth.settings import AuthSettings

    with pytest.raises(ValueError, match=r"TIPS_AUTH_APPLE_ISSUER.*TIPS_DEV_MODE=1"):
        AuthSettings(auth_apple_issuer="http://127.0.0.1:9999", dev_mode=False)
    assert AuthSettings(auth_apple_issuer="http://127.0.0.1:9999", dev_mode=True)
    assert AuthSettings(dev_mode=False).auth_google_issuer.startswith("https://")

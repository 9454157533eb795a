"""Small cryptographic helpers: envelope encryption, token hashes, random values.

No crypto is written here: AES-256-GCM comes from ``cryptography``, hashes
and randomness from the standard library.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kernel.settings import SettingsError

# Refresh tokens carry this prefix so secret scanners recognise a leaked one.
REFRESH_TOKEN_PREFIX = "tipsrt_"
_NONCE_BYTES = 12


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def generate_kek() -> str:
    """A new key-encryption key for ``TIPS_AUTH_KEY_ENCRYPTION_KEY``."""
    return b64url(secrets.token_bytes(32))


def sha256(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return hashlib.sha256(data).digest()


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def new_refresh_token() -> str:
    """An opaque refresh token: prefix + 256 random bits."""
    return REFRESH_TOKEN_PREFIX + b64url(secrets.token_bytes(32))


def looks_like_refresh_token(value: str) -> bool:
    return value.startswith(REFRESH_TOKEN_PREFIX) and 20 < len(value) < 100


def pkce_verifier() -> str:
    """RFC 7636 code verifier: 43 characters of the unreserved alphabet."""
    return b64url(secrets.token_bytes(32))


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of ``verifier``."""
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())


class DecryptionError(Exception):
    """A sealed value could not be opened (wrong KEK, tampered row)."""


@dataclass(frozen=True)
class Sealed:
    """An AES-256-GCM ciphertext (nonce || ciphertext+tag) and its KEK id."""

    kek_id: str
    blob: bytes


class Envelope:
    """Encrypts small secrets with the configured key-encryption key.

    The associated data binds a ciphertext to its row (a signing key's kid,
    a web sign-in's state hash), so a ciphertext copied to another row does
    not open.
    """

    def __init__(self, kek_b64: str, kek_id: str) -> None:
        if not kek_b64:
            raise SettingsError(
                "invalid configuration: TIPS_AUTH_KEY_ENCRYPTION_KEY is required "
                "(32 random bytes, base64url; services.auth.crypto.generate_kek() makes one)"
            )
        try:
            key = b64url_decode(kek_b64.strip())
        except ValueError:
            key = b""
        if len(key) != 32:
            raise SettingsError(
                "invalid configuration: TIPS_AUTH_KEY_ENCRYPTION_KEY must be 32 bytes, base64url"
            )
        self.kek_id = kek_id
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, associated: bytes) -> Sealed:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return Sealed(self.kek_id, nonce + self._aead.encrypt(nonce, plaintext, associated))

    def open(self, sealed: Sealed, associated: bytes) -> bytes:
        if sealed.kek_id != self.kek_id:
            raise DecryptionError(
                f"value sealed with key-encryption key {sealed.kek_id!r}, "
                f"configured is {self.kek_id!r}"
            )
        nonce, body = sealed.blob[:_NONCE_BYTES], sealed.blob[_NONCE_BYTES:]
        try:
            return self._aead.decrypt(nonce, body, associated)
        except InvalidTag:
            raise DecryptionError("sealed value does not open with the configured key") from None

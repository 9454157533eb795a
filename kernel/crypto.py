"""Envelope encryption (AES-256-GCM) and key rings, shared by services that keep secrets.

Each record gets its own random 256-bit data key. The plaintext is sealed
with the data key; the data key is sealed with a key-encryption key (KEK)
from a ``KeyRing``, whose id is stored beside the record. Both seals bind a
caller-chosen ``context`` (the service and the record's owner, e.g.
``"tips-notifier/users/u1/devices/d1"``) as associated data, so a ciphertext
copied onto another row does not open. Rotating a KEK only re-seals the
small data keys (``rewrap``).

No crypto is written here: AES-GCM comes from ``cryptography``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["CryptoError", "Envelope", "KeyRing", "UnknownKey", "decode_key", "sha256_digest"]

_NONCE = 12
KEY_BYTES = 32


class CryptoError(Exception):
    """A record could not be sealed or opened; never carries key material."""


class UnknownKey(CryptoError):
    """The record's KEK id is not in the key ring."""


@dataclass(frozen=True)
class Envelope:
    """What is stored: KEK id, wrapped data key, and the sealed plaintext."""

    key_id: str
    wrapped_key: bytes  # nonce || AES-GCM(KEK, data key)
    ciphertext: bytes  # nonce || AES-GCM(data key, plaintext)


def decode_key(text: str) -> bytes:
    """A base64 (standard or url-safe, padding optional) 32-byte key; CryptoError otherwise."""
    raw = text.strip()
    try:
        key = base64.urlsafe_b64decode(
            raw.replace("+", "-").replace("/", "_") + "=" * (-len(raw) % 4)
        )
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise CryptoError("must be a base64 32-byte key")
    return key


def sha256_digest(value: str | bytes) -> bytes:
    """SHA-256 of ``value`` (UTF-8 for text): a lookup key that reveals nothing useful."""
    return hashlib.sha256(value.encode() if isinstance(value, str) else value).digest()


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _open(key: bytes, blob: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(blob[:_NONCE], blob[_NONCE:], aad)
    except (InvalidTag, ValueError) as exc:
        raise CryptoError("the record does not open (wrong key, or altered)") from exc


def _wrap_aad(context: str, key_id: str) -> bytes:
    # The KEK id is bound too: a row whose key id was edited fails to open.
    return f"dek/{key_id}/{context}".encode()


def _data_aad(context: str) -> bytes:
    return f"data/{context}".encode()


class KeyRing:
    """KEKs by id, and the id new records are wrapped under."""

    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        for key_id, key in keys.items():
            if len(key) != KEY_BYTES:
                raise CryptoError(f"KEK {key_id!r} is not {KEY_BYTES} bytes")
        if current not in keys:
            raise CryptoError(f"the current KEK id {current!r} is not in the key ring")
        self._keys = dict(keys)
        self.current = current

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def key(self, key_id: str) -> bytes:
        try:
            return self._keys[key_id]
        except KeyError:
            raise UnknownKey(f"KEK {key_id!r} is not in the key ring") from None

    def seal(self, context: str, plaintext: bytes) -> Envelope:
        """A new envelope for ``plaintext`` bound to ``context``, under the current KEK."""
        data_key = AESGCM.generate_key(bit_length=256)
        ciphertext = _seal(data_key, plaintext, _data_aad(context))
        wrapped = _seal(self.key(self.current), data_key, _wrap_aad(context, self.current))
        return Envelope(self.current, wrapped, ciphertext)

    def open(self, context: str, envelope: Envelope) -> bytes:
        """The plaintext of ``envelope``; CryptoError if it was sealed for another context."""
        data_key = self._unwrap(context, envelope)
        return _open(data_key, envelope.ciphertext, _data_aad(context))

    def rewrap(self, context: str, envelope: Envelope, target: str) -> Envelope:
        """The same ciphertext with its data key re-sealed under ``target``."""
        data_key = self._unwrap(context, envelope)
        _open(data_key, envelope.ciphertext, _data_aad(context))  # prove it still opens
        wrapped = _seal(self.key(target), data_key, _wrap_aad(context, target))
        return Envelope(target, wrapped, envelope.ciphertext)

    def _unwrap(self, context: str, envelope: Envelope) -> bytes:
        kek = self.key(envelope.key_id)
        return _open(kek, envelope.wrapped_key, _wrap_aad(context, envelope.key_id))

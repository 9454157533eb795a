"""Envelope encryption of provider tokens (AES-256-GCM), pure and synchronous.

Each record gets its own random 256-bit data key. The plaintext is sealed
with the data key; the data key is sealed with a key-encryption key (KEK)
from the key ring, whose id is stored beside the record. Both seals bind the
record's owner (the connection name) as associated data, so a ciphertext
copied onto another connection's row does not open. Rotating a KEK only
re-seals the small data keys (``rewrap``); the token ciphertext is untouched,
so a rewrap never races a token refresh's plaintext.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE = 12


class VaultError(Exception):
    """A record could not be sealed or opened; never carries key material."""


class UnknownKey(VaultError):
    """The record's KEK id is not in the key ring."""


@dataclass(frozen=True)
class Envelope:
    """What is stored: KEK id, wrapped data key, and the sealed plaintext."""

    key_id: str
    wrapped_key: bytes  # nonce || AES-GCM(KEK, data key)
    ciphertext: bytes  # nonce || AES-GCM(data key, plaintext)


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _open(key: bytes, blob: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(blob[:_NONCE], blob[_NONCE:], aad)
    except (InvalidTag, ValueError) as exc:
        raise VaultError("the record does not open (wrong key, or altered)") from exc


def _wrap_aad(owner: str, key_id: str) -> bytes:
    # The KEK id is bound too: a row whose key id was edited fails to open.
    return f"tips-integrations/dek/{key_id}/{owner}".encode()


def _data_aad(owner: str) -> bytes:
    return f"tips-integrations/data/{owner}".encode()


class KeyRing:
    """The KEKs by id and the current one."""

    def __init__(self, keys: dict[str, bytes], current: str) -> None:
        for key_id, key in keys.items():
            if len(key) != 32:
                raise VaultError(f"KEK {key_id!r} is not 32 bytes")
        if current not in keys:
            raise VaultError(f"the current KEK id {current!r} is not in the key ring")
        self._keys = dict(keys)
        self.current = current

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def key(self, key_id: str) -> bytes:
        try:
            return self._keys[key_id]
        except KeyError:
            raise UnknownKey(f"KEK {key_id!r} is not in the key ring") from None

    def seal(self, owner: str, plaintext: bytes) -> Envelope:
        """A new envelope for ``plaintext`` owned by ``owner``, under the current KEK."""
        data_key = AESGCM.generate_key(bit_length=256)
        ciphertext = _seal(data_key, plaintext, _data_aad(owner))
        wrapped = _seal(self.key(self.current), data_key, _wrap_aad(owner, self.current))
        return Envelope(self.current, wrapped, ciphertext)

    def open(self, owner: str, envelope: Envelope) -> bytes:
        data_key = self._unwrap(owner, envelope)
        return _open(data_key, envelope.ciphertext, _data_aad(owner))

    def rewrap(self, owner: str, envelope: Envelope, target: str) -> Envelope:
        """The same ciphertext with its data key re-sealed under ``target``."""
        data_key = self._unwrap(owner, envelope)
        _open(data_key, envelope.ciphertext, _data_aad(owner))  # prove it still opens
        wrapped = _seal(self.key(target), data_key, _wrap_aad(owner, target))
        return Envelope(target, wrapped, envelope.ciphertext)

    def _unwrap(self, owner: str, envelope: Envelope) -> bytes:
        kek = self.key(envelope.key_id)
        return _open(kek, envelope.wrapped_key, _wrap_aad(owner, envelope.key_id))

"""Envelope encryption of provider tokens: the kernel's AES-256-GCM key ring.

Each record gets its own random data key, sealed by a key-encryption key
(KEK) whose id is stored beside the record; both seals bind the record's
owner (the connection name) as associated data, so a ciphertext copied onto
another connection's row does not open. Rotating a KEK only re-seals the
small data keys (``KeyRing.rewrap``), so a rewrap never races a token refresh.
See ``kernel.crypto`` for the construction.
"""

from __future__ import annotations

from kernel.crypto import CryptoError as VaultError
from kernel.crypto import Envelope, KeyRing, UnknownKey

__all__ = ["Envelope", "KeyRing", "UnknownKey", "VaultError"]

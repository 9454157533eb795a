"""Access-token signing keys: generated, sealed in the database, rotated.

One key is current (signs new tokens). A rotation retires it: its private
half is deleted at once (it never signs again) and its public half stays in
the JWK Set until ``remove_time``, at least the access-token lifetime plus
leeway later, so every token it signed keeps verifying until it expires.

Access tokens are ES256 JWTs (``typ: at+jwt``) with ``iss``, ``aud``,
``sub``, ``exp``, ``iat``, ``nbf``, ``jti``, ``scope`` and ``sid``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.db import Database, lock
from services.auth import store
from services.auth.crypto import Envelope, Sealed

log = logging.getLogger(__name__)

ALG = "ES256"
CURVE = "P-256"
TOKEN_TYPE = "at+jwt"
_PUBLIC_MEMBERS = ("kty", "crv", "x", "y", "kid", "alg", "use")


@dataclass(frozen=True)
class PublicKey:
    kid: str
    jwk: dict[str, str]
    key: ECKey
    remove_time: datetime | None


@dataclass(frozen=True)
class IssuedToken:
    token: str
    jti: str
    expire_time: datetime


@dataclass(frozen=True)
class AccessClaims:
    user: str
    session: str
    scopes: list[str]
    expire_time: datetime


def _now() -> datetime:
    return datetime.now(UTC)


def new_key() -> ECKey:
    key = ECKey.generate_key(CURVE, private=True)
    # RFC 7638 thumbprint as kid: stable, and different for every key.
    key.ensure_kid()
    return key


def public_jwk(key: ECKey) -> dict[str, str]:
    data = key.as_dict(private=False)
    data.update(alg=ALG, use="sig")
    return {k: str(data[k]) for k in _PUBLIC_MEMBERS if k in data}


async def _lock_keys(session: AsyncSession) -> None:
    await lock(session, "tips.auth.signing_keys")


async def insert_key(session: AsyncSession, envelope: Envelope, key: ECKey, now: datetime) -> str:
    kid = str(key.kid)
    sealed = envelope.seal(key.as_pem(private=True), kid.encode())
    await session.execute(
        store.signing_keys.insert().values(
            kid=kid,
            alg=ALG,
            public_jwk=public_jwk(key),
            private_key=sealed.blob,
            kek_id=sealed.kek_id,
            create_time=now,
        )
    )
    return kid


async def rotate(
    session: AsyncSession, envelope: Envelope, grace: timedelta, now: datetime | None = None
) -> str:
    """Make a new current key, retire the old one(s); returns the new kid.

    Serialised by a transaction-level advisory lock so two rotations at once
    cannot leave two current keys.
    """
    now = now or _now()
    await _lock_keys(session)
    t = store.signing_keys
    await session.execute(
        update(t)
        .where(t.c.retire_time.is_(None))
        .values(retire_time=now, remove_time=now + grace, private_key=None, kek_id=None)
    )
    return await insert_key(session, envelope, new_key(), now)


class KeyRing:
    """The signing key and the public keys, cached from the database."""

    def __init__(
        self,
        db: Database,
        envelope: Envelope,
        *,
        issuer: str,
        audience: str,
        reload_seconds: float,
        leeway_seconds: int,
    ) -> None:
        self.db = db
        self.envelope = envelope
        self.issuer = issuer
        self.audience = audience
        self.reload_seconds = reload_seconds
        self.leeway_seconds = leeway_seconds
        self._current: ECKey | None = None
        self._public: dict[str, PublicKey] = {}
        self._order: list[str] = []
        self._loaded_at = -1e18
        self._lock = asyncio.Lock()

    async def load(self, *, create_if_missing: bool = True) -> None:
        """Read the keys; the first start creates the first key."""
        async with self._lock:
            await self._load(create_if_missing)

    async def _load(self, create_if_missing: bool) -> None:
        t = store.signing_keys
        now = _now()
        async with self.db.transaction() as session:
            rows = (
                await session.execute(
                    select(t)
                    .where((t.c.remove_time.is_(None)) | (t.c.remove_time > now))
                    .order_by(t.c.retire_time.is_not(None), t.c.create_time.desc())
                )
            ).all()
            current = [r for r in rows if r.retire_time is None and r.private_key is not None]
            if not current and create_if_missing:
                # Two replicas starting at once must not both create a key.
                await _lock_keys(session)
                again = (
                    await session.execute(
                        select(t.c.kid).where(
                            t.c.retire_time.is_(None), t.c.private_key.is_not(None)
                        )
                    )
                ).first()
                if again is None:
                    await insert_key(session, self.envelope, new_key(), now)
                rows = (
                    await session.execute(
                        select(t)
                        .where((t.c.remove_time.is_(None)) | (t.c.remove_time > now))
                        .order_by(t.c.retire_time.is_not(None), t.c.create_time.desc())
                    )
                ).all()
                current = [r for r in rows if r.retire_time is None and r.private_key is not None]
        public: dict[str, PublicKey] = {}
        order: list[str] = []
        for row in rows:
            jwk_dict = {str(k): str(v) for k, v in dict(row.public_jwk).items()}
            key = ECKey.import_key({k: v for k, v in jwk_dict.items() if k != "use"})
            public[row.kid] = PublicKey(row.kid, jwk_dict, key, row.remove_time)
            order.append(row.kid)
        signing: ECKey | None = None
        if current:
            row = current[0]
            pem = self.envelope.open(Sealed(row.kek_id, row.private_key), row.kid.encode())
            signing = ECKey.import_key(pem, {"kid": row.kid})
            # Current key first in the set.
            order.remove(row.kid)
            order.insert(0, row.kid)
        self._current, self._public, self._order = signing, public, order
        self._loaded_at = time.monotonic()

    async def _fresh(self) -> None:
        if time.monotonic() - self._loaded_at < self.reload_seconds and self._current is not None:
            return
        async with self._lock:
            if time.monotonic() - self._loaded_at >= self.reload_seconds or self._current is None:
                await self._load(True)

    async def jwks(self) -> list[dict[str, str]]:
        """The JWK Set's keys, current first; keys past their removal time are gone."""
        await self._fresh()
        now = _now()
        return [
            self._public[k].jwk
            for k in self._order
            if self._public[k].remove_time is None or self._public[k].remove_time > now  # type: ignore[operator]
        ]

    async def sign(
        self, *, user: str, session: str, scopes: str, ttl_seconds: int, now: datetime | None = None
    ) -> IssuedToken:
        await self._fresh()
        key = self._current
        if key is None:
            raise RuntimeError("no current signing key")
        return sign_with(
            key,
            issuer=self.issuer,
            audience=self.audience,
            user=user,
            session=session,
            scopes=scopes,
            ttl_seconds=ttl_seconds,
            now=now or _now(),
        )

    async def verify(self, token: str) -> AccessClaims | None:
        """The claims of a valid access token of ours, else None (never raises)."""
        await self._fresh()
        try:
            obj = jws.extract_compact(token.encode("ascii"))
            header = obj.headers()
        except (JoseError, ValueError, UnicodeError):
            return None
        if header.get("alg") != ALG or not isinstance(header.get("kid"), str):
            return None
        found = self._public.get(header["kid"])
        if found is None and time.monotonic() - self._loaded_at > 1.0:
            # Maybe a rotation in another process: re-read, at most once a second.
            await self.load(create_if_missing=False)
            found = self._public.get(header["kid"])
        if found is None:
            return None
        if found.remove_time is not None and found.remove_time <= _now():
            return None
        try:
            decoded = jwt.decode(token, found.key, algorithms=[ALG])
        except (JoseError, ValueError):
            return None
        return check_claims(decoded.claims, self.issuer, self.audience, self.leeway_seconds)


def sign_with(
    key: ECKey,
    *,
    issuer: str,
    audience: str,
    user: str,
    session: str,
    scopes: str,
    ttl_seconds: int,
    now: datetime,
) -> IssuedToken:
    iat = int(now.timestamp())
    exp = iat + ttl_seconds
    jti = secrets.token_urlsafe(16)
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": user,
        "iat": iat,
        "nbf": iat,
        "exp": exp,
        "jti": jti,
        "scope": scopes,
        "sid": session,
    }
    header = {"alg": ALG, "kid": key.kid, "typ": TOKEN_TYPE}
    token = jwt.encode(header, claims, key, algorithms=[ALG])
    return IssuedToken(token, jti, datetime.fromtimestamp(exp, UTC))


def check_claims(
    claims: Mapping[str, Any], issuer: str, audience: str, leeway: int
) -> AccessClaims | None:
    now = time.time()
    exp, iat = claims.get("exp"), claims.get("iat")
    if claims.get("iss") != issuer or claims.get("aud") != audience:
        return None
    if not isinstance(exp, int) or exp + leeway < now:
        return None
    if isinstance(iat, int) and iat - leeway > now:
        return None
    sub, sid, scope = claims.get("sub"), claims.get("sid"), claims.get("scope", "")
    if not isinstance(sub, str) or not isinstance(sid, str) or not isinstance(scope, str):
        return None
    return AccessClaims(sub, sid, scope.split(), datetime.fromtimestamp(exp, UTC))

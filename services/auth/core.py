"""The auth service's logic: sign-in, sessions, refresh-token rotation, revocation.

Every write and the events it causes commit in one transaction (outbox).
Refresh tokens rotate on every use; the spent ones are kept (as hashes) so a
second use is recognised as theft and revokes the whole session.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.message import Message
from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from kernel import paging
from kernel.db import Database
from kernel.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
)
from kernel.ids import random_id
from kernel.names import user_name
from kernel.outbox import enqueue
from kernel.timestamps import timestamp
from services.auth import crypto, domain, signing, store
from services.auth.crypto import Envelope, Sealed
from services.auth.providers import IdClaims, Provider, Providers, invalid_token
from services.auth.settings import AuthSettings
from services.auth.signing import IssuedToken, KeyRing
from tips.auth.v1 import events_pb2, identity_pb2, session_pb2

log = logging.getLogger(__name__)
S = session_pb2


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Device:
    name: str
    platform: int
    user_agent: str


@dataclass(frozen=True)
class Issued:
    """A signed-in or refreshed session and its new tokens."""

    user_id: str
    user_created: bool
    access: IssuedToken
    refresh_token: str
    refresh_expire_time: datetime
    session: session_pb2.Session


@dataclass(frozen=True)
class Introspection:
    user_id: str
    session_id: str
    scopes: list[str]
    expire_time: datetime


def _event_ids(message: Message, now: datetime) -> str:
    event_id = random_id()
    message.event_id = event_id  # type: ignore[attr-defined]
    message.occur_time.CopyFrom(timestamp(now))  # type: ignore[attr-defined]
    return event_id


async def _publish(session: AsyncSession, message: Message, now: datetime) -> None:
    event_id = _event_ids(message, now)
    await enqueue(session, store.outbox, message, msg_id=event_id)


class AuthCore:
    def __init__(
        self,
        db: Database,
        settings: AuthSettings,
        keys: KeyRing,
        providers: Providers,
        envelope: Envelope,
    ) -> None:
        self.db = db
        self.settings = settings
        self.keys = keys
        self.providers = providers
        self.envelope = envelope
        self.access_ttl = settings.auth_access_token_ttl_seconds
        self.refresh_ttl = timedelta(seconds=settings.auth_refresh_token_ttl_seconds)

    def provider(self, provider: int, field: str = "provider") -> Provider:
        found = self.providers.get(domain.check_provider(provider, field))
        if found is None or not found.client_ids:
            raise FailedPrecondition(
                f"sign-in with {identity_pb2.IdentityProvider.Name(provider)} is not configured",  # type: ignore[arg-type]
                reason="PROVIDER_NOT_CONFIGURED",
            )
        return found

    # --- sign-in ----------------------------------------------------------------

    async def verify_id_token(
        self, provider: int, id_token: str, raw_nonce: str
    ) -> tuple[Provider, IdClaims]:
        found = self.provider(provider)
        claims = await found.verify(id_token, domain.expected_nonce(provider, raw_nonce))
        return found, claims

    async def _consume_nonce(
        self, session: AsyncSession, provider: int, nonce: str, token_exp: float
    ) -> None:
        """Record the nonce as used until the token expires; a second use fails."""
        key = crypto.sha256(f"{provider}:{nonce}")
        expire = datetime.fromtimestamp(token_exp, UTC) + timedelta(
            seconds=self.settings.jwt_leeway_seconds
        )
        result = await session.execute(
            insert(store.used_nonces)
            .values(nonce_hash=key, expire_time=expire)
            .on_conflict_do_nothing()
            .returning(store.used_nonces.c.nonce_hash)
        )
        if result.scalar() is None:
            raise invalid_token("its nonce was already used (replay)", "nonce")

    async def sign_in(
        self, provider: int, id_token: str, raw_nonce: str, device: Device, display_name: str
    ) -> Issued:
        found, claims = await self.verify_id_token(provider, id_token, raw_nonce)
        nonce = domain.expected_nonce(provider, raw_nonce)
        return await self._sign_in_verified(found, claims, nonce, device, display_name)

    async def _sign_in_verified(
        self, found: Provider, claims: IdClaims, nonce: str, device: Device, display_name: str
    ) -> Issued:
        now = _now()
        async with self.db.transaction() as session:
            await self._consume_nonce(session, found.provider, nonce, claims.expire_time)
            user_id, identity_id, created = await self._find_or_create(
                session, found.provider, claims, device, display_name or claims.name, now
            )
            return await self._new_session(
                session, user_id, identity_id, found.provider, device, created, now
            )

    async def _find_or_create(
        self,
        session: AsyncSession,
        provider: int,
        claims: IdClaims,
        device: Device,
        display_name: str,
        now: datetime,
    ) -> tuple[str, str, bool]:
        t = store.identities
        row = (
            await session.execute(
                update(t)
                .where(t.c.provider == provider, t.c.subject == claims.subject)
                .values(
                    email=claims.email, email_verified=claims.email_verified, last_sign_in_time=now
                )
                .returning(t.c.id, t.c.user_id)
            )
        ).first()
        if row is not None:
            return row.user_id, row.id, False
        # First sign-in with this account: a new user. Never linked to an
        # existing user by email (see docs/auth.md).
        user_id, identity_id = domain.new_id("u"), domain.new_id("i")
        await session.execute(store.users.insert().values(id=user_id, create_time=now))
        inserted = await session.execute(
            insert(t)
            .values(
                id=identity_id,
                user_id=user_id,
                provider=provider,
                subject=claims.subject,
                email=claims.email,
                email_verified=claims.email_verified,
                link_time=now,
                last_sign_in_time=now,
            )
            .on_conflict_do_nothing(constraint="uq_identities_provider_subject")
            .returning(t.c.id)
        )
        if inserted.scalar() is None:
            raise Aborted("a concurrent sign-in created this account; retry", reason="CONFLICT")
        identity = domain.identity_name(user_id, identity_id)
        await _publish(
            session,
            events_pb2.UserSignedUp(
                user=user_name(user_id),
                identity=identity,
                provider=provider,  # type: ignore[arg-type]
                email=claims.email,
                email_verified=claims.email_verified,
                display_name=display_name[:200],
                platform=device.platform,  # type: ignore[arg-type]
            ),
            now,
        )
        await _publish(
            session,
            events_pb2.IdentityLinked(
                user=user_name(user_id),
                identity=identity,
                provider=provider,  # type: ignore[arg-type]
                email=claims.email,
                email_verified=claims.email_verified,
            ),
            now,
        )
        return user_id, identity_id, True

    async def _new_session(
        self,
        session: AsyncSession,
        user_id: str,
        identity_id: str,
        provider: int,
        device: Device,
        created: bool,
        now: datetime,
    ) -> Issued:
        session_id = domain.new_id("s")
        access = await self.keys.sign(
            user=user_id,
            session=session_id,
            scopes=self.settings.auth_default_scopes,
            ttl_seconds=self.access_ttl,
            now=now,
        )
        refresh, refresh_exp = crypto.new_refresh_token(), now + self.refresh_ttl
        values: dict[str, Any] = {
            "id": session_id,
            "user_id": user_id,
            "identity_id": identity_id,
            "provider": provider,
            "device_name": device.name,
            "user_agent": device.user_agent,
            "platform": device.platform,
            "create_time": now,
            "last_use_time": now,
            "expire_time": refresh_exp,
            "access_expire_time": access.expire_time,
        }
        row = (
            await session.execute(
                store.sessions.insert().values(**values).returning(store.sessions)
            )
        ).one()
        await session.execute(
            store.refresh_tokens.insert().values(
                token_hash=crypto.sha256(refresh),
                session_id=session_id,
                create_time=now,
                expire_time=refresh_exp,
            )
        )
        return Issued(
            user_id, created, access, refresh, refresh_exp, domain.session_proto(row, now, None)
        )

    # --- web sign-in ------------------------------------------------------------

    async def start_web(
        self, provider: int, redirect_uri: str, login_hint: str, device: Device
    ) -> tuple[str, str, datetime]:
        found = self.provider(provider)
        if not found.web_client_id:
            raise FailedPrecondition(
                f"web sign-in with {found.name} is not configured", reason="PROVIDER_NOT_CONFIGURED"
            )
        allowed = self.settings.auth_web_redirect_uris
        if not allowed:
            raise FailedPrecondition("no web redirect URIs are configured", reason="NOT_CONFIGURED")
        redirect_uri = redirect_uri or allowed[0]
        if redirect_uri not in allowed:
            raise InvalidArgument([("redirect_uri", "is not one of the configured redirect URIs")])
        if len(login_hint) > 320:
            raise InvalidArgument([("login_hint", "must be at most 320 characters")])
        state, nonce, verifier = (
            crypto.pkce_verifier(),
            crypto.pkce_verifier(),
            crypto.pkce_verifier(),
        )
        state_hash = crypto.sha256(state)
        now = _now()
        expire = now + timedelta(seconds=self.settings.auth_web_state_ttl_seconds)
        sealed = self.envelope.seal(verifier.encode(), state_hash)
        uri = await found.authorization_uri(
            redirect_uri=redirect_uri,
            state=state,
            nonce=nonce,
            challenge=crypto.pkce_challenge(verifier),
            login_hint=login_hint,
        )
        async with self.db.transaction() as session:
            await session.execute(
                store.web_signins.insert().values(
                    state_hash=state_hash,
                    provider=provider,
                    redirect_uri=redirect_uri,
                    device_name=device.name,
                    user_agent=device.user_agent,
                    nonce=nonce,
                    code_verifier=sealed.blob,
                    kek_id=sealed.kek_id,
                    expire_time=expire,
                )
            )
        return uri, state, expire

    async def complete_web(
        self, code: str, state: str, error: str, error_description: str
    ) -> tuple[Issued, str]:
        if not state:
            raise InvalidArgument([("state", "is required")])
        t = store.web_signins
        state_hash = crypto.sha256(state)
        # Used once: taken out whatever happens next.
        async with self.db.transaction() as session:
            row = (
                await session.execute(delete(t).where(t.c.state_hash == state_hash).returning(t))
            ).first()
        if row is None or row.expire_time <= _now():
            raise Unauthenticated(
                "this sign-in is unknown, already completed or expired; start again",
                reason="WEB_SIGN_IN_STATE_INVALID",
            )
        if error:
            safe = error if error.replace("_", "").isalnum() and len(error) <= 64 else "error"
            raise Unauthenticated(
                f"the provider ended the sign-in: {safe}",
                reason="WEB_SIGN_IN_DECLINED",
                metadata={"error": safe},
            )
        if not code:
            raise InvalidArgument([("code", "is required unless error is set")])
        found = self.provider(row.provider)
        verifier = self.envelope.open(Sealed(row.kek_id, row.code_verifier), state_hash).decode()
        id_token = await found.exchange_code(
            code=code, redirect_uri=row.redirect_uri, verifier=verifier
        )
        claims = await found.verify(id_token, row.nonce)
        device = Device(row.device_name, S.PLATFORM_WEB, row.user_agent)
        issued = await self._sign_in_verified(found, claims, row.nonce, device, "")
        return issued, row.redirect_uri

    # --- refresh and sign-out ---------------------------------------------------

    async def refresh(self, token: str) -> Issued:
        if not token:
            raise InvalidArgument([("refresh_token", "is required")])
        invalid = Unauthenticated(
            "the refresh token is not valid; sign in again", reason="REFRESH_TOKEN_INVALID"
        )
        if not crypto.looks_like_refresh_token(token):
            raise invalid
        now = _now()
        rt, s = store.refresh_tokens, store.sessions
        reused = False
        async with self.db.transaction() as session:
            row = (
                await session.execute(
                    select(rt, s.c.user_id, s.c.revoke_time, s.c.expire_time.label("s_exp"))
                    .join(s, s.c.id == rt.c.session_id)
                    .where(rt.c.token_hash == crypto.sha256(token))
                    .with_for_update(of=s)
                )
            ).first()
            if row is None or row.revoke_time is not None:
                raise invalid
            if row.spent_time is not None:
                # A rotated token came back: someone holds a copy. End the family.
                await self._revoke(
                    session, [row.session_id], S.SESSION_REVOKE_REASON_REFRESH_TOKEN_REUSED, now
                )
                reused = True
            elif row.expire_time <= now:
                raise invalid
            else:
                issued = await self._rotate(session, row, now)
        if reused:
            log.warning("refresh token reused; session revoked", extra={"session": row.session_id})
            raise Unauthenticated(
                "the refresh token was already used; the session is revoked, sign in again",
                reason="REFRESH_TOKEN_REUSED",
            )
        return issued

    async def _rotate(self, session: AsyncSession, row: Any, now: datetime) -> Issued:
        rt, s = store.refresh_tokens, store.sessions
        await session.execute(
            update(rt).where(rt.c.token_hash == row.token_hash).values(spent_time=now)
        )
        access = await self.keys.sign(
            user=row.user_id,
            session=row.session_id,
            scopes=self.settings.auth_default_scopes,
            ttl_seconds=self.access_ttl,
            now=now,
        )
        refresh, refresh_exp = crypto.new_refresh_token(), now + self.refresh_ttl
        await session.execute(
            rt.insert().values(
                token_hash=crypto.sha256(refresh),
                session_id=row.session_id,
                create_time=now,
                expire_time=refresh_exp,
            )
        )
        updated = (
            await session.execute(
                update(s)
                .where(s.c.id == row.session_id)
                .values(
                    last_use_time=now,
                    expire_time=refresh_exp,
                    access_expire_time=access.expire_time,
                )
                .returning(s)
            )
        ).one()
        proto = domain.session_proto(updated, now, row.session_id)
        return Issued(row.user_id, False, access, refresh, refresh_exp, proto)

    async def sign_out(self, token: str) -> None:
        if not token:
            raise InvalidArgument([("refresh_token", "is required")])
        if not crypto.looks_like_refresh_token(token):
            raise InvalidArgument([("refresh_token", "is not a refresh token of this service")])
        rt = store.refresh_tokens
        async with self.db.transaction() as session:
            session_id = (
                await session.execute(
                    select(rt.c.session_id).where(rt.c.token_hash == crypto.sha256(token))
                )
            ).scalar()
            # Unknown or already ended: signing out succeeds all the same.
            if session_id is not None:
                await self._revoke(session, [session_id], S.SESSION_REVOKE_REASON_SIGN_OUT, _now())

    async def revoke_all_in(
        self, session: AsyncSession, user_id: str, reason: int, now: datetime
    ) -> int:
        """Revoke every active session of ``user_id`` in the caller's transaction."""
        s = store.sessions
        ids = (
            (
                await session.execute(
                    select(s.c.id).where(s.c.user_id == user_id, s.c.revoke_time.is_(None))
                )
            )
            .scalars()
            .all()
        )
        return await self._revoke(session, list(ids), reason, now) if ids else 0

    async def _revoke(
        self, session: AsyncSession, session_ids: Sequence[str], reason: int, now: datetime
    ) -> int:
        """Revoke the active ones among ``session_ids``; one SessionRevoked each."""
        s = store.sessions
        rows = (
            await session.execute(
                update(s)
                .where(s.c.id.in_(session_ids), s.c.revoke_time.is_(None))
                .values(revoke_time=now, revoke_reason=reason)
                .returning(s.c.id, s.c.user_id, s.c.access_expire_time)
            )
        ).all()
        for row in rows:
            event = events_pb2.SessionRevoked(
                user=user_name(row.user_id),
                session=domain.session_name(row.user_id, row.id),
                reason=reason,  # type: ignore[arg-type]
            )
            event.access_token_expire_time.CopyFrom(timestamp(row.access_expire_time))
            await _publish(session, event, now)
        return len(rows)

    # --- the user's sessions ----------------------------------------------------

    async def list_sessions(
        self, user_id: str, size: int, token: str, show_inactive: bool, current: str | None
    ) -> tuple[list[session_pb2.Session], str]:
        s = store.sessions
        fingerprint = f"sessions|{user_id}|{show_inactive}"
        cursor = paging.decode(token, fingerprint)
        now = _now()
        query = select(s).where(s.c.user_id == user_id)
        if not show_inactive:
            query = query.where(s.c.revoke_time.is_(None), s.c.expire_time > now)
        if cursor is not None:
            from sqlalchemy import tuple_

            query = query.where(tuple_(s.c.create_time, s.c.id) < (cursor.time, cursor.id))
        query = query.order_by(s.c.create_time.desc(), s.c.id.desc()).limit(size + 1)
        async with self.db.session() as session:
            rows = (await session.execute(query)).all()
        page = rows[:size]
        next_token = ""
        if len(rows) > size:
            last = page[-1]
            next_token = paging.encode(paging.Cursor(last.create_time, last.id), fingerprint)
        return [domain.session_proto(r, now, current) for r in page], next_token

    async def get_session(
        self, user_id: str, session_id: str, name: str, current: str | None
    ) -> session_pb2.Session:
        s = store.sessions
        async with self.db.session() as session:
            row = (
                await session.execute(select(s).where(s.c.id == session_id, s.c.user_id == user_id))
            ).first()
        if row is None:
            raise NotFound(name, resource_type="tips.app/Session")
        return domain.session_proto(row, _now(), current)

    async def revoke_session(
        self, user_id: str, session_id: str, name: str, current: str | None
    ) -> session_pb2.Session:
        s = store.sessions
        now = _now()
        async with self.db.transaction() as session:
            exists = (
                await session.execute(
                    select(s.c.id).where(s.c.id == session_id, s.c.user_id == user_id)
                )
            ).scalar()
            if exists is None:
                raise NotFound(name, resource_type="tips.app/Session")
            await self._revoke(session, [session_id], S.SESSION_REVOKE_REASON_USER_REVOKED, now)
            row = (await session.execute(select(s).where(s.c.id == session_id))).one()
        return domain.session_proto(row, now, current)

    async def revoke_user_sessions(self, user_id: str, reason: int) -> int:
        s = store.sessions
        async with self.db.transaction() as session:
            ids = (
                (
                    await session.execute(
                        select(s.c.id).where(s.c.user_id == user_id, s.c.revoke_time.is_(None))
                    )
                )
                .scalars()
                .all()
            )
            return await self._revoke(session, list(ids), reason, _now()) if ids else 0

    # --- identities ---------------------------------------------------------------

    async def list_identities(self, user_id: str) -> list[identity_pb2.Identity]:
        t = store.identities
        async with self.db.session() as session:
            rows = (
                await session.execute(
                    select(t).where(t.c.user_id == user_id).order_by(t.c.link_time, t.c.id)
                )
            ).all()
        return [domain.identity_proto(r) for r in rows]

    async def get_identity(
        self, user_id: str, identity_id: str, name: str
    ) -> identity_pb2.Identity:
        t = store.identities
        async with self.db.session() as session:
            row = (
                await session.execute(
                    select(t).where(t.c.id == identity_id, t.c.user_id == user_id)
                )
            ).first()
        if row is None:
            raise NotFound(name, resource_type="tips.app/Identity")
        return domain.identity_proto(row)

    async def link_identity(
        self, user_id: str, provider: int, id_token: str, raw_nonce: str
    ) -> identity_pb2.Identity:
        found, claims = await self.verify_id_token(provider, id_token, raw_nonce)
        t = store.identities
        now = _now()
        async with self.db.transaction() as session:
            await self._consume_nonce(
                session, provider, domain.expected_nonce(provider, raw_nonce), claims.expire_time
            )
            existing = (
                await session.execute(
                    select(t).where(t.c.provider == provider, t.c.subject == claims.subject)
                )
            ).first()
            if existing is not None:
                if existing.user_id != user_id:
                    raise AlreadyExists(
                        f"this {found.name} account is linked to another user",
                        reason="IDENTITY_LINKED_ELSEWHERE",
                    )
                return domain.identity_proto(existing)
            identity_id = domain.new_id("i")
            row = (
                await session.execute(
                    t.insert()
                    .values(
                        id=identity_id,
                        user_id=user_id,
                        provider=provider,
                        subject=claims.subject,
                        email=claims.email,
                        email_verified=claims.email_verified,
                        link_time=now,
                        last_sign_in_time=now,
                    )
                    .returning(t)
                )
            ).one()
            await _publish(
                session,
                events_pb2.IdentityLinked(
                    user=user_name(user_id),
                    identity=domain.identity_name(user_id, identity_id),
                    provider=provider,  # type: ignore[arg-type]
                    email=claims.email,
                    email_verified=claims.email_verified,
                ),
                now,
            )
        return domain.identity_proto(row)

    async def user_exists(self, user_id: str) -> bool:
        async with self.db.session() as session:
            found = (
                await session.execute(select(store.users.c.id).where(store.users.c.id == user_id))
            ).scalar()
        return found is not None

    # --- tokens and keys ------------------------------------------------------------

    async def introspect(self, token: str) -> Introspection | None:
        if not token or len(token) > 8192:
            return None
        claims = await self.keys.verify(token)
        if claims is None:
            return None
        s = store.sessions
        async with self.db.session() as session:
            row = (
                await session.execute(
                    select(s.c.revoke_time, s.c.expire_time).where(
                        s.c.id == claims.session, s.c.user_id == claims.user
                    )
                )
            ).first()
        if row is None or row.revoke_time is not None:
            return None
        return Introspection(claims.user, claims.session, claims.scopes, claims.expire_time)

    async def rotate_keys(self, grace_seconds: float | None) -> str:
        minimum = self.settings.previous_key_grace_seconds()
        grace = max(float(minimum), grace_seconds or 0.0)
        async with self.db.transaction() as session:
            kid = await signing.rotate(session, self.envelope, timedelta(seconds=grace))
        await self.keys.load()
        return kid

    async def prune(self) -> None:
        """Forget what has expired: used nonces, started web sign-ins."""
        now = _now()
        async with self.db.transaction() as session:
            await session.execute(
                delete(store.used_nonces).where(store.used_nonces.c.expire_time < now)
            )
            await session.execute(
                delete(store.web_signins).where(store.web_signins.c.expire_time < now)
            )

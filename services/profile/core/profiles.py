"""Profile use cases: each one transaction (data + outbox event), then the read model.

Profiles come to exist three ways, all idempotent:
- ``ProfileInternalService.CreateProfile`` (auth at sign-up) and the
  ``tips.auth.v1.UserSignedUp`` consumer create it with the sign-up values;
- the user's first profile or consent call creates it with defaults, so an app
  never sees NOT_FOUND while the sign-up event is still on its way. Such a
  profile is "unseeded": when the sign-up values arrive later, they fill the
  fields still at their defaults (email, display name, time zone, language)
  once, and the profile is marked seeded.

Every write takes a per-user advisory lock and checks the user is not erased,
so nothing can recreate a deleted user's rows (a late sign-up event included).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf import field_mask_pb2
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.db import Database, lock
from kernel.errors import Aborted, NotFound
from kernel.ids import random_id
from kernel.outbox import enqueue
from kernel.timestamps import timestamp
from services.profile import domain, names, store
from services.profile.readmodel import UserContexts
from tips.profile.v1 import events_pb2, profile_pb2, user_context_pb2


def now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return random_id()


async def lock_user(session: AsyncSession, user_id: str) -> None:
    """Serialize this user's writes (and erasure) until the transaction ends."""
    await lock(session, f"profile:{user_id}")


async def refuse_erased(session: AsyncSession, user_id: str, resource: str) -> None:
    if await store.is_erased(session, user_id):
        raise NotFound(resource, f"{resource} not found: the user was deleted")


def with_etag(profile: profile_pb2.Profile) -> profile_pb2.Profile:
    profile.etag = domain.etag_of(profile)
    return profile


@dataclass(frozen=True)
class SignUp:
    """Values a sign-up seeds a profile with (already checked or cleaned)."""

    display_name: str = ""
    time_zone: str = ""
    language_code: str = ""
    email: str = ""


def clean_display_name(value: str) -> str:
    """A provider's name made acceptable (events cannot be rejected)."""
    kept = "".join(c for c in value if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp"))
    return kept.strip()[: domain.DISPLAY_NAME_MAX].strip()


class Profiles:
    """Profile reads and writes, keeping ``contexts`` current after each commit."""

    def __init__(self, db: Database, contexts: UserContexts) -> None:
        self.db = db
        self.contexts = contexts

    async def _publish(
        self,
        session: AsyncSession,
        user_id: str,
        profile: profile_pb2.Profile,
        paths: list[str],
        *,
        created: bool = False,
    ) -> None:
        event = events_pb2.ProfileChanged(
            event_id=new_id(),
            user=names.user_name(user_id),
            profile=with_etag(profile),
            changed_fields=field_mask_pb2.FieldMask(paths=paths),
            created=created,
        )
        event.occur_time.CopyFrom(profile.update_time)
        await enqueue(session, store.outbox, event, msg_id=event.event_id)

    async def ensure(self, session: AsyncSession, user_id: str) -> profile_pb2.Profile:
        """The user's profile, created with defaults when missing (lock held by caller)."""
        stored = await store.get_profile(session, user_id, for_update=True)
        if stored is not None:
            return stored.profile
        profile = domain.default_profile(names.profile_name(user_id))
        at = now()
        profile.create_time.CopyFrom(timestamp(at))
        profile.update_time.CopyFrom(timestamp(at))
        await store.insert_profile(session, user_id, profile, seeded=False)
        await self._publish(session, user_id, profile, domain.set_fields(profile), created=True)
        return profile

    async def contexts_of(self, user_ids: list[str]) -> dict[str, user_context_pb2.UserContext]:
        """Read-model entries; users missing from memory (a profile another
        replica created) are read from the database once and remembered."""
        found: dict[str, user_context_pb2.UserContext] = {}
        missing: list[str] = []
        for user_id in user_ids:
            ctx = self.contexts.get(user_id)
            if ctx is None:
                missing.append(user_id)
            else:
                found[user_id] = ctx
        if missing:
            async with self.db.session() as session:
                profiles = await store.get_profiles(session, missing)
                granted = await store.granted_purposes(session, list(profiles))
            for user_id, profile in profiles.items():
                self.contexts.add(user_id, profile, granted.get(user_id, []))
                ctx = self.contexts.get(user_id)
                if ctx is not None:
                    found[user_id] = ctx
        return found

    async def get(self, user_id: str) -> profile_pb2.Profile:
        async with self.db.session() as session:
            stored = await store.get_profile(session, user_id)
        if stored is not None:
            return with_etag(stored.profile)
        async with self.db.transaction() as session:
            await lock_user(session, user_id)
            await refuse_erased(session, user_id, names.profile_name(user_id))
            profile = await self.ensure(session, user_id)
        self.contexts.put_profile(user_id, profile)
        return with_etag(profile)

    async def update(
        self,
        user_id: str,
        patch: profile_pb2.Profile,
        mask: field_mask_pb2.FieldMask | None,
    ) -> profile_pb2.Profile:
        paths = domain.mask_paths(mask, patch)
        async with self.db.transaction() as session:
            await lock_user(session, user_id)
            await refuse_erased(session, user_id, names.profile_name(user_id))
            current = await self.ensure(session, user_id)
            if patch.etag and patch.etag != domain.etag_of(current):
                raise Aborted(
                    "the profile changed since it was read (etag mismatch): read it again",
                    reason="ETAG_MISMATCH",
                    metadata={"field": "profile.etag"},
                )
            updated = domain.apply_update(current, patch, paths)
            domain.validate(updated, paths)
            changed = domain.changed_fields(current, updated)
            if not changed:
                return with_etag(current)
            updated.update_time.CopyFrom(timestamp(now()))
            await store.save_profile(session, user_id, updated)
            await self._publish(session, user_id, updated, changed)
        self.contexts.put_profile(user_id, updated)
        return with_etag(updated)

    async def create(self, user_id: str, signup: SignUp) -> tuple[profile_pb2.Profile, bool]:
        """Create with sign-up values, or seed an unseeded profile; (profile, created)."""
        async with self.db.transaction() as session:
            await lock_user(session, user_id)
            await refuse_erased(session, user_id, names.user_name(user_id))
            profile, created = await self.create_in(session, user_id, signup)
        self.contexts.put_profile(user_id, profile)
        return with_etag(profile), created

    async def create_in(
        self, session: AsyncSession, user_id: str, signup: SignUp
    ) -> tuple[profile_pb2.Profile, bool]:
        """``create`` inside the caller's transaction (the sign-up consumer's, with its claim)."""
        stored = await store.get_profile(session, user_id, for_update=True)
        if stored is not None and stored.seeded:
            return stored.profile, False
        base = stored.profile if stored else domain.default_profile(names.profile_name(user_id))
        seeded = profile_pb2.Profile()
        seeded.CopyFrom(base)
        if signup.display_name and not seeded.display_name:
            seeded.display_name = signup.display_name
        if signup.email and not seeded.email:
            seeded.email = signup.email
        if signup.time_zone and seeded.time_zone == domain.DEFAULT_TIME_ZONE:
            seeded.time_zone = signup.time_zone
        if signup.language_code and seeded.language_code == domain.DEFAULT_LANGUAGE:
            seeded.language_code = signup.language_code
        at = now()
        if stored is None:
            seeded.create_time.CopyFrom(timestamp(at))
            seeded.update_time.CopyFrom(timestamp(at))
            await store.insert_profile(session, user_id, seeded, seeded=True)
            await self._publish(session, user_id, seeded, domain.set_fields(seeded), created=True)
            return seeded, True
        changed = domain.changed_fields(base, seeded)
        if base.email != seeded.email:
            changed.append("email")
        if changed:
            seeded.update_time.CopyFrom(timestamp(at))
        await store.save_profile(session, user_id, seeded, seeded=True)
        if changed:
            await self._publish(session, user_id, seeded, changed)
        return seeded, False

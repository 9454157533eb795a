"""Consent use cases and erasure: one transaction each, then the read model.

A decision locks the consent row, appends a ``consent_events`` row and
enqueues ``ConsentChanged`` (msg id: the consent event's name) in the same
transaction, so the history, the current state and the event never disagree.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from kernel import paging
from kernel.errors import InvalidArgument, NotFound
from kernel.outbox import enqueue
from kernel.timestamps import timestamp, to_datetime
from services.profile import names, store
from services.profile.core.profiles import Profiles, lock_user, new_id, now, refuse_erased
from tips.profile.v1 import consent_pb2, erasure_pb2, events_pb2

GRANTED = consent_pb2.CONSENT_STATE_GRANTED
REVOKED = consent_pb2.CONSENT_STATE_REVOKED
TEXT_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
# Sources a caller may claim; SYSTEM is the service's own (erasure).
CALLER_SOURCES = (
    consent_pb2.CONSENT_SOURCE_APP,
    consent_pb2.CONSENT_SOURCE_WEB,
    consent_pb2.CONSENT_SOURCE_SUPPORT,
)
LIST_MAX = 100
EVENTS_DEFAULT, EVENTS_MAX = 50, 500
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def check_decision(text_version: str, source: int, *, version_required: bool) -> None:
    v: list[tuple[str, str]] = []
    if not text_version:
        if version_required:
            v.append(("text_version", "is required"))
    elif not TEXT_VERSION.match(text_version):
        v.append(("text_version", "must be 1-64 letters, digits or . _ : - such as '2025-01-15'"))
    if source not in CALLER_SOURCES:
        v.append(
            ("source", "must be CONSENT_SOURCE_APP, CONSENT_SOURCE_WEB or CONSENT_SOURCE_SUPPORT")
        )
    if v:
        raise InvalidArgument(v)


class Consents:
    """Grant, revoke, read; and the erasure of a whole user."""

    def __init__(self, profiles: Profiles) -> None:
        self.profiles = profiles
        self.db = profiles.db
        self.contexts = profiles.contexts

    async def _decide(
        self,
        user_id: str,
        purpose: int,
        state: int,
        text_version: str,
        source: int,
    ) -> consent_pb2.Consent:
        async with self.db.transaction() as session:
            await lock_user(session, user_id)
            await refuse_erased(session, user_id, names.consent_name(user_id, purpose))
            # The read model answers for users with a profile: make sure there is one.
            profile = await self.profiles.ensure(session, user_id)
            current = await store.lock_consent(session, user_id, purpose)
            version = text_version or current.text_version
            if not version:
                raise InvalidArgument(
                    [("text_version", "is required: the consent was never decided")]
                )
            if current.state == state and text_version in ("", current.text_version):
                decided = current  # repeating a decision changes nothing
            else:
                decided = await self._record(session, user_id, purpose, state, version, source)
        self.contexts.put_profile(user_id, profile)
        if decided.HasField("update_time"):
            self.contexts.set_purpose(
                user_id, purpose, decided.state, to_datetime(decided.update_time)
            )
        return decided

    async def _record(
        self,
        session: AsyncSession,
        user_id: str,
        purpose: int,
        state: int,
        version: str,
        source: int,
    ) -> consent_pb2.Consent:
        """Append the decision to the history, update the state, enqueue the event."""
        current = await store.lock_consent(session, user_id, purpose)
        event_id = new_id()
        event = consent_pb2.ConsentEvent(
            name=names.consent_event_name(user_id, purpose, event_id),
            state=state,  # type: ignore[arg-type]
            previous_state=current.state,
            text_version=version,
            source=source,  # type: ignore[arg-type]
        )
        event.purpose = purpose  # type: ignore[assignment]
        event.create_time.CopyFrom(timestamp(now()))
        await store.record_decision(session, user_id, event, event_id)
        await self._publish(session, user_id, event)
        return await store.lock_consent(session, user_id, purpose)

    async def _publish(
        self, session: AsyncSession, user_id: str, event: consent_pb2.ConsentEvent
    ) -> None:
        changed = events_pb2.ConsentChanged(
            event_id=new_id(),
            user=names.user_name(user_id),
            consent=names.consent_name(user_id, event.purpose),
            purpose=event.purpose,
            state=event.state,
            previous_state=event.previous_state,
            text_version=event.text_version,
            source=event.source,
            consent_event=event.name,
        )
        changed.occur_time.CopyFrom(event.create_time)
        await enqueue(session, store.outbox, changed, msg_id=event.name)

    async def grant(
        self, user_id: str, purpose: int, text_version: str, source: int
    ) -> consent_pb2.Consent:
        check_decision(text_version, source, version_required=True)
        return await self._decide(user_id, purpose, GRANTED, text_version, source)

    async def revoke(
        self, user_id: str, purpose: int, text_version: str, source: int
    ) -> consent_pb2.Consent:
        check_decision(text_version, source, version_required=False)
        return await self._decide(user_id, purpose, REVOKED, text_version, source)

    async def _all(
        self, session: AsyncSession, user_id: str, resource: str
    ) -> dict[int, consent_pb2.Consent]:
        await refuse_erased(session, user_id, resource)
        return await store.get_consents(session, user_id)

    async def get(self, user_id: str, purpose: int) -> consent_pb2.Consent:
        async with self.db.session() as session:
            found = await self._all(session, user_id, names.consent_name(user_id, purpose))
        return found[purpose]

    async def list_consents(
        self, user_id: str, parent: str, size: int, token: str
    ) -> tuple[list[consent_pb2.Consent], str]:
        """Every purpose in enum order, paged (0: all of them)."""
        size = paging.page_size(size, default=LIST_MAX, maximum=LIST_MAX)
        cursor = paging.decode(token, parent)
        after = int(cursor.id) if cursor else 0
        async with self.db.session() as session:
            found = await self._all(session, user_id, parent)
        remaining = [found[p] for p in names.ALL_PURPOSES if p > after]
        page = remaining[:size]
        next_token = ""
        if len(remaining) > size:
            next_token = paging.encode(paging.Cursor(_EPOCH, str(page[-1].purpose)), parent)
        return page, next_token

    async def history(
        self, user_id: str, purpose: int, parent: str, size: int, token: str
    ) -> tuple[list[consent_pb2.ConsentEvent], str]:
        """The decisions, newest first; ``purpose`` 0 for every purpose."""
        size = paging.page_size(size, default=EVENTS_DEFAULT, maximum=EVENTS_MAX)
        cursor = paging.decode(token, parent)
        after = (cursor.time, cursor.id) if cursor else None
        async with self.db.session() as session:
            await refuse_erased(session, user_id, parent)
            events, last = await store.list_consent_events(session, user_id, purpose, size, after)
        next_token = paging.encode(paging.Cursor(*last), parent) if last else ""
        return events, next_token

    # --- erasure -----------------------------------------------------------------------

    async def delete_user(self, user_id: str) -> erasure_pb2.Erasure:
        """Purge the user's profile-schema rows and publish ``UserDeleted`` once."""
        erasure_name = names.erasure_name(user_id)
        async with self.db.transaction() as session:
            await lock_user(session, user_id)
            at = now()
            first = await store.start_erasure(session, user_id, at)
            # Purged on every call: harmless when already done.
            await store.purge_user(session, user_id)
            if first:
                event = events_pb2.UserDeleted(
                    event_id=new_id(), user=names.user_name(user_id), erasure=erasure_name
                )
                event.occur_time.CopyFrom(timestamp(at))
                # The erasure's name as msg id: one deletion, one message.
                await enqueue(session, store.outbox, event, msg_id=erasure_name)
            erasure = await store.get_erasure(session, user_id)
        self.contexts.forget(user_id)
        assert erasure is not None
        return erasure

    async def get_erasure(self, user_id: str) -> erasure_pb2.Erasure:
        async with self.db.session() as session:
            erasure = await store.get_erasure(session, user_id)
        if erasure is None:
            name = names.erasure_name(user_id)
            raise NotFound(name, resource_type="tips.app/Erasure")
        return erasure

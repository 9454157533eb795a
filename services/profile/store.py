"""The profile service's tables (schema ``profile``) and queries.

- ``profiles``: one row per user; ``payload`` is the serialized ``Profile``
  (name and etag excluded), ``seeded`` says sign-up values were applied.
- ``consents``: the current decision per (user, purpose); no row = UNDECIDED.
- ``consent_events``: the append-only history. A trigger refuses UPDATE and
  TRUNCATE, and DELETE unless the transaction set ``tips.erasure = 'on'``
  (only ``purge_user`` does), so the code path cannot rewrite history by mistake.
- ``erasures``: one row per deleted user, kept as the record that it was done.
- ``outbox`` / ``processed_messages``: kernel outbox and idempotent consumers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Row,
    Table,
    Text,
    delete,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from kernel.outbox import outbox_table, processed_table
from kernel.timestamps import timestamp, to_datetime
from services.profile import names
from tips.profile.v1 import consent_pb2, erasure_pb2, profile_pb2

SCHEMA = "profile"
metadata = MetaData(schema=SCHEMA)

profiles = Table(
    "profiles",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("payload", LargeBinary, nullable=False),
    Column("seeded", Boolean, nullable=False, server_default="false"),
    Column("create_time", DateTime(timezone=True), nullable=False),
    Column("update_time", DateTime(timezone=True), nullable=False),
)

consents = Table(
    "consents",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("purpose", Integer, primary_key=True),
    Column("state", Integer, nullable=False),
    Column("text_version", Text, nullable=False, server_default=""),
    Column("source", Integer, nullable=False, server_default="0"),
    Column("update_time", DateTime(timezone=True), nullable=True),
)

consent_events = Table(
    "consent_events",
    metadata,
    Column("id", Text, primary_key=True),
    Column("user_id", Text, nullable=False),
    Column("purpose", Integer, nullable=False),
    Column("state", Integer, nullable=False),
    Column("previous_state", Integer, nullable=False),
    Column("text_version", Text, nullable=False),
    Column("source", Integer, nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False),
    Index("ix_consent_events_user_time", "user_id", "create_time", "id"),
)

erasures = Table(
    "erasures",
    metadata,
    Column("user_id", Text, primary_key=True),
    Column("state", Integer, nullable=False),
    Column("request_time", DateTime(timezone=True), nullable=False),
    Column("complete_time", DateTime(timezone=True), nullable=True),
)

outbox = outbox_table(metadata)
processed = processed_table(metadata)

UNDECIDED = consent_pb2.CONSENT_STATE_UNDECIDED


# --- profiles ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredProfile:
    profile: profile_pb2.Profile
    seeded: bool


def _profile_from(
    user_id: str, payload: bytes, create: datetime, upd: datetime
) -> profile_pb2.Profile:
    profile = profile_pb2.Profile.FromString(payload)
    profile.name = names.profile_name(user_id)
    profile.create_time.CopyFrom(timestamp(create))
    profile.update_time.CopyFrom(timestamp(upd))
    return profile


def _payload(profile: profile_pb2.Profile) -> bytes:
    copy = profile_pb2.Profile()
    copy.CopyFrom(profile)
    for field in ("name", "etag", "create_time", "update_time"):
        copy.ClearField(field)
    return copy.SerializeToString(deterministic=True)


async def get_profile(
    session: AsyncSession, user_id: str, *, for_update: bool = False
) -> StoredProfile | None:
    stmt = select(profiles).where(profiles.c.user_id == user_id)
    if for_update:
        stmt = stmt.with_for_update()
    row = (await session.execute(stmt)).first()
    if row is None:
        return None
    profile = _profile_from(user_id, row.payload, row.create_time, row.update_time)
    return StoredProfile(profile, row.seeded)


async def insert_profile(
    session: AsyncSession, user_id: str, profile: profile_pb2.Profile, *, seeded: bool
) -> bool:
    """Insert unless a profile exists; True when this call created it."""
    result = await session.execute(
        insert(profiles)
        .values(
            user_id=user_id,
            payload=_payload(profile),
            seeded=seeded,
            create_time=to_datetime(profile.create_time),
            update_time=to_datetime(profile.update_time),
        )
        .on_conflict_do_nothing(index_elements=["user_id"])
        .returning(profiles.c.user_id)
    )
    return result.scalar() is not None


async def save_profile(
    session: AsyncSession, user_id: str, profile: profile_pb2.Profile, *, seeded: bool | None = None
) -> None:
    values: dict[str, object] = {
        "payload": _payload(profile),
        "update_time": to_datetime(profile.update_time),
    }
    if seeded is not None:
        values["seeded"] = seeded
    await session.execute(update(profiles).where(profiles.c.user_id == user_id).values(**values))


async def get_profiles(
    session: AsyncSession, user_ids: list[str]
) -> dict[str, profile_pb2.Profile]:
    rows = (await session.execute(select(profiles).where(profiles.c.user_id.in_(user_ids)))).all()
    return {
        r.user_id: _profile_from(r.user_id, r.payload, r.create_time, r.update_time) for r in rows
    }


async def load_profiles(session: AsyncSession) -> list[profile_pb2.Profile]:
    rows = (await session.execute(select(profiles))).all()
    return [_profile_from(r.user_id, r.payload, r.create_time, r.update_time) for r in rows]


# --- consents ---------------------------------------------------------------------------


def consent_from(user_id: str, purpose: int, row: Row[Any] | None) -> consent_pb2.Consent:
    consent = consent_pb2.Consent(name=names.consent_name(user_id, purpose), state=UNDECIDED)
    consent.purpose = purpose  # type: ignore[assignment]
    if row is not None and row.state != UNDECIDED:
        consent.state = row.state
        consent.text_version = row.text_version
        consent.source = row.source
        if row.update_time is not None:
            consent.update_time.CopyFrom(timestamp(row.update_time))
    return consent


async def lock_consent(session: AsyncSession, user_id: str, purpose: int) -> consent_pb2.Consent:
    """The current consent, its row locked until commit (created UNDECIDED if missing)."""
    await session.execute(
        insert(consents)
        .values(user_id=user_id, purpose=purpose, state=UNDECIDED)
        .on_conflict_do_nothing(index_elements=["user_id", "purpose"])
    )
    row = (
        await session.execute(
            select(consents)
            .where(consents.c.user_id == user_id, consents.c.purpose == purpose)
            .with_for_update()
        )
    ).first()
    return consent_from(user_id, purpose, row)


async def get_consents(session: AsyncSession, user_id: str) -> dict[int, consent_pb2.Consent]:
    """Every purpose's consent (UNDECIDED where never decided)."""
    rows = (await session.execute(select(consents).where(consents.c.user_id == user_id))).all()
    by_purpose = {r.purpose: r for r in rows}
    return {p: consent_from(user_id, p, by_purpose.get(p)) for p in names.ALL_PURPOSES}


async def record_decision(
    session: AsyncSession, user_id: str, event: consent_pb2.ConsentEvent, event_id: str
) -> None:
    """Write the new current state and append ``event`` to the history."""
    at = to_datetime(event.create_time)
    await session.execute(
        update(consents)
        .where(consents.c.user_id == user_id, consents.c.purpose == int(event.purpose))
        .values(
            state=int(event.state),
            text_version=event.text_version,
            source=int(event.source),
            update_time=at,
        )
    )
    await session.execute(
        insert(consent_events).values(
            id=event_id,
            user_id=user_id,
            purpose=int(event.purpose),
            state=int(event.state),
            previous_state=int(event.previous_state),
            text_version=event.text_version,
            source=int(event.source),
            create_time=at,
        )
    )


async def list_consent_events(
    session: AsyncSession,
    user_id: str,
    purpose: int,
    page_size: int,
    after: tuple[datetime, str] | None,
) -> tuple[list[consent_pb2.ConsentEvent], tuple[datetime, str] | None]:
    """One page, newest first, and the cursor of its last row (None on the last page)."""
    e = consent_events
    stmt = select(e).where(e.c.user_id == user_id)
    if purpose:
        stmt = stmt.where(e.c.purpose == purpose)
    if after is not None:
        stmt = stmt.where(tuple_(e.c.create_time, e.c.id) < tuple_(*after))
    stmt = stmt.order_by(e.c.create_time.desc(), e.c.id.desc()).limit(page_size + 1)
    rows = (await session.execute(stmt)).all()
    page = rows[:page_size]
    out = []
    for r in page:
        event = consent_pb2.ConsentEvent(
            name=names.consent_event_name(user_id, r.purpose, r.id),
            purpose=r.purpose,
            state=r.state,
            previous_state=r.previous_state,
            text_version=r.text_version,
            source=r.source,
        )
        event.create_time.CopyFrom(timestamp(r.create_time))
        out.append(event)
    cursor = (page[-1].create_time, page[-1].id) if len(rows) > page_size else None
    return out, cursor


async def granted_purposes(
    session: AsyncSession, user_ids: list[str] | None = None
) -> dict[str, list[int]]:
    """Granted purposes per user (of ``user_ids``, or all for the read model's load)."""
    stmt = select(consents.c.user_id, consents.c.purpose).where(
        consents.c.state == consent_pb2.CONSENT_STATE_GRANTED
    )
    if user_ids is not None:
        stmt = stmt.where(consents.c.user_id.in_(user_ids))
    out: dict[str, list[int]] = {}
    for r in (await session.execute(stmt.order_by(consents.c.purpose))).all():
        out.setdefault(r.user_id, []).append(r.purpose)
    return out


# --- erasure ----------------------------------------------------------------------------


async def get_erasure(session: AsyncSession, user_id: str) -> erasure_pb2.Erasure | None:
    row = (await session.execute(select(erasures).where(erasures.c.user_id == user_id))).first()
    if row is None:
        return None
    erasure = erasure_pb2.Erasure(name=names.erasure_name(user_id), state=row.state)
    erasure.request_time.CopyFrom(timestamp(row.request_time))
    if row.complete_time is not None:
        erasure.complete_time.CopyFrom(timestamp(row.complete_time))
    return erasure


async def is_erased(session: AsyncSession, user_id: str) -> bool:
    found = await session.execute(select(erasures.c.user_id).where(erasures.c.user_id == user_id))
    return found.first() is not None


async def start_erasure(session: AsyncSession, user_id: str, at: datetime) -> bool:
    """Record the erasure; False when it was already recorded (a repeat)."""
    result = await session.execute(
        insert(erasures)
        .values(user_id=user_id, state=erasure_pb2.ERASURE_STATE_RUNNING, request_time=at)
        .on_conflict_do_nothing(index_elements=["user_id"])
        .returning(erasures.c.user_id)
    )
    return result.scalar() is not None


async def purge_user(session: AsyncSession, user_id: str) -> None:
    """Delete every row of the user (history included) in the caller's transaction."""
    # The only path allowed past the history's append-only trigger.
    await session.execute(text("SET LOCAL tips.erasure = 'on'"))
    await session.execute(delete(consent_events).where(consent_events.c.user_id == user_id))
    await session.execute(delete(consents).where(consents.c.user_id == user_id))
    await session.execute(delete(profiles).where(profiles.c.user_id == user_id))
    await session.execute(text("SET LOCAL tips.erasure = 'off'"))

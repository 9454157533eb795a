"""Push devices: registration with sealed tokens, listing, removal.

A push token is a credential (whoever holds it can push to the phone): it is
stored only sealed (``kernel.crypto`` envelope bound to the device's name)
and as its SHA-256, which finds a re-registration without opening anything.
It is never returned and never logged. One token belongs to one user: when
another user registers a token already known (the phone changed hands or
accounts), the old user's device is removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from kernel import paging
from kernel.crypto import Envelope, KeyRing, sha256_digest
from kernel.db import Database
from kernel.errors import AlreadyExists, NotFound
from kernel.ids import random_id
from kernel.timestamps import timestamp
from services.notifier import domain, store
from tips.notifier.v1 import device_pb2
from tips.notifier.v1 import notifier_service_pb2 as pb

_RESOURCE = "tips.app/Device"
d = store.devices


def seal_context(user_id: str, device_id: str) -> str:
    return f"tips-notifier/{domain.device_name(user_id, device_id)}"


@dataclass(frozen=True)
class Target:
    """A device to push to, with its opened token (kept in memory only)."""

    device_id: str
    platform: int
    token: str


def to_proto(row: Any) -> device_pb2.Device:
    device = device_pb2.Device(
        name=domain.device_name(row.user_id, row.device_id),
        platform=row.platform,
        app_version=row.app_version,
        display_name=row.display_name,
        state=row.state,
    )
    device.create_time.CopyFrom(timestamp(row.create_time))
    device.update_time.CopyFrom(timestamp(row.update_time))
    if row.last_push_time is not None:
        device.last_push_time.CopyFrom(timestamp(row.last_push_time))
    return device


class Devices:
    def __init__(self, db: Database, ring: KeyRing) -> None:
        self.db = db
        self.ring = ring

    async def create(self, user_id: str, request: pb.CreateDeviceRequest) -> device_pb2.Device:
        domain.check_device(request)
        token = request.device.push_token.strip()
        token_hash = sha256_digest(token)
        async with self.db.transaction() as session:
            existing = (
                await session.execute(
                    select(d).where(d.c.token_hash == token_hash).with_for_update()
                )
            ).first()
            if existing is not None and existing.user_id == user_id:
                return to_proto(await self._refresh(session, existing, request.device))
            if existing is not None:
                # Same install, another account now: the previous user stops getting its pushes.
                await session.execute(
                    delete(d).where(
                        d.c.user_id == existing.user_id, d.c.device_id == existing.device_id
                    )
                )
            device_id = request.device_id or f"d-{random_id()[:16]}"
            sealed = self.ring.seal(seal_context(user_id, device_id), token.encode())
            row = (
                await session.execute(
                    insert(d)
                    .values(
                        user_id=user_id,
                        device_id=device_id,
                        platform=int(request.device.platform),
                        app_version=request.device.app_version,
                        display_name=request.device.display_name,
                        state=domain.ACTIVE,
                        token_hash=token_hash,
                        key_id=sealed.key_id,
                        wrapped_key=sealed.wrapped_key,
                        token_ciphertext=sealed.ciphertext,
                    )
                    .on_conflict_do_nothing()
                    .returning(*d.c)
                )
            ).first()
            if row is None:
                raced = (
                    await session.execute(select(d).where(d.c.token_hash == token_hash))
                ).first()
                if raced is not None and raced.user_id == user_id:
                    return to_proto(raced)  # a concurrent registration of the same token won
                raise AlreadyExists(
                    f"{domain.device_name(user_id, device_id)} already exists",
                    metadata={"field": "device_id"},
                )
            return to_proto(row)

    async def _refresh(self, session: AsyncSession, row: Any, device: device_pb2.Device) -> Any:
        values: dict[str, Any] = {"state": domain.ACTIVE, "update_time": _now()}
        if device.app_version:
            values["app_version"] = device.app_version
        if device.display_name:
            values["display_name"] = device.display_name
        return (
            await session.execute(
                update(d)
                .where(d.c.user_id == row.user_id, d.c.device_id == row.device_id)
                .values(**values)
                .returning(*d.c)
            )
        ).one()

    async def list(
        self, user_id: str, size: int, token: str
    ) -> tuple[list[device_pb2.Device], str]:
        fingerprint = f"devices/{user_id}"
        cursor = paging.decode(token, fingerprint)
        query = select(d).where(d.c.user_id == user_id)
        if cursor is not None:
            query = query.where(
                or_(
                    d.c.create_time < cursor.time,
                    and_(d.c.create_time == cursor.time, d.c.device_id < cursor.id),
                )
            )
        query = query.order_by(d.c.create_time.desc(), d.c.device_id.desc()).limit(size + 1)
        async with self.db.session() as session:
            rows = (await session.execute(query)).all()
        next_token = ""
        if len(rows) > size:
            rows = rows[:size]
            last = rows[-1]
            next_token = paging.encode(paging.Cursor(last.create_time, last.device_id), fingerprint)
        return [to_proto(r) for r in rows], next_token

    async def delete(self, user_id: str, device_id: str) -> None:
        async with self.db.transaction() as session:
            if not await remove(session, user_id, device_id):
                raise NotFound(domain.device_name(user_id, device_id), resource_type=_RESOURCE)

    def open(self, row: Any) -> Target:
        envelope = Envelope(row.key_id, row.wrapped_key, row.token_ciphertext)
        token = self.ring.open(seal_context(row.user_id, row.device_id), envelope).decode()
        return Target(row.device_id, row.platform, token)


async def remove(session: AsyncSession, user_id: str, device_id: str) -> bool:
    result = await session.execute(
        delete(d).where(d.c.user_id == user_id, d.c.device_id == device_id)
    )
    return bool(getattr(result, "rowcount", 0))


async def has_active(session: AsyncSession, user_id: str) -> bool:
    found = await session.execute(
        select(d.c.device_id).where(d.c.user_id == user_id, d.c.state == domain.ACTIVE).limit(1)
    )
    return found.first() is not None


async def active_rows(session: AsyncSession, user_id: str) -> list[Any]:
    rows = await session.execute(
        select(d)
        .where(d.c.user_id == user_id, d.c.state == domain.ACTIVE)
        .order_by(d.c.create_time)
    )
    return list(rows.all())


async def mark_pushed(
    session: AsyncSession, user_id: str, device_ids: list[str], when: datetime
) -> None:
    if device_ids:
        await session.execute(
            update(d)
            .where(d.c.user_id == user_id, d.c.device_id.in_(device_ids))
            .values(last_push_time=when)
        )


def _now() -> datetime:
    return datetime.now(UTC)
